"""`python -m panfpn.data.check`: every problem of a dataset in one run, before training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image
from process_helpers import live_group, run, started

from panfpn.data.check import Split, check_splits, root_splits
from panfpn.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> Path:
    """A generated dataset of 4 images (images/, panoptic/, panoptic.json)."""
    return generate_dataset(tmp_path_factory.mktemp("check") / "ds", 4, 3, height=48, width=64)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _break_three(ds: Path) -> dict:
    """A PNG segment missing from the JSON (image 1), a PNG of the wrong size (image 2), a missing
    image file (image 3); returns the JSON."""
    data = json.loads((ds / "panoptic.json").read_text())
    anns = data["annotations"]
    anns[0]["segments_info"].pop()
    png = ds / "panoptic" / anns[1]["file_name"]
    Image.open(png).resize((32, 24), Image.NEAREST).save(png)
    (ds / "images" / data["images"][2]["file_name"]).unlink()
    (ds / "panoptic.json").write_text(json.dumps(data))
    return data


def _check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "panfpn.data.check", *args], cwd=ROOT, env=ENV, timeout=timeout,
               capture_output=True, text=True)


def _check_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """What ``_check`` returns, from ``check.main`` in this process: for tests of the report's lines and
    exit status (~3 s less than a new interpreter each); the command itself is run by the others."""
    import logging

    from panfpn.data import check

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # main's logging.basicConfig must not outlive it
    capsys.readouterr()
    try:
        status = check.main(list(args))
    finally:
        root.handlers[:], root.level = handlers, level
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["panfpn.data.check", *args], status, out, err)


def _explicit(ds: Path, json_file: Path | None = None) -> list[str]:
    return ["--json", str(json_file or ds / "panoptic.json"), "--images", str(ds / "images"),
            "--panoptic", str(ds / "panoptic")]


def test_clean_folder_layout_exits_0_with_the_summary(four_images, tmp_path):
    root = tmp_path / "root"
    for split in ("train", "val"):  # the data=coco_panoptic_folder layout (docs/data.md)
        shutil.copytree(four_images / "images", root / "images" / split)
        shutil.copytree(four_images / "panoptic", root / "annotations" / f"panoptic_{split}")
        shutil.copy(four_images / "panoptic.json", root / "annotations" / f"panoptic_{split}.json")
    done = _check("--root", str(root), "--workers", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "checked 8 images (train 4, val 4): 0 with problems"


def test_a_split_without_its_folders_is_one_problem_and_the_other_is_checked(four_images, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(four_images / "images", root / "images" / "train")
    shutil.copytree(four_images / "panoptic", root / "annotations" / "panoptic_train")
    for split in ("train", "val"):  # val: its JSON, no PNG or image folder
        shutil.copy(four_images / "panoptic.json", root / "annotations" / f"panoptic_{split}.json")
    report = check_splits(root_splits(root), 0)
    assert report["images_checked"] == 4 and report["by_kind"] == {"missing folder": 1}
    assert [(p["split"], p["image_id"]) for p in report["problems"]] == [("val", None)]
    assert "panoptic_val" in report["problems"][0]["message"]


def test_three_problems_in_three_images_are_all_reported(four_images, tmp_path):
    ds = _copy(four_images, tmp_path / "ds")
    data = _break_three(ds)
    out = tmp_path / "report.json"
    done = _check(*_explicit(ds), "--workers", "2", "--out", str(out))
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    ids = [img["id"] for img in data["images"]]
    assert lines[0].startswith(f"train: image id {ids[0]!r}: [segment ids] ")
    assert "are in the PNG but not in" in lines[0]
    assert lines[1].startswith(f"train: image id {ids[1]!r}: [size mismatch] ")
    assert lines[2].startswith(f"train: image id {ids[2]!r}: [missing image] ")
    assert lines[2].count(str(ds / "images" / data["images"][2]["file_name"])) == 1  # not repeated after 'not found:'
    assert lines[3] == ("checked 4 images (train 4): 3 with problems; by kind: missing image 1, "
                        "segment ids 1, size mismatch 1")
    report = json.loads(out.read_text())
    assert [(p["image_id"], p["kind"]) for p in report["problems"]] == [
        (ids[0], "segment ids"), (ids[1], "size mismatch"), (ids[2], "missing image")]
    assert report["problems"][2]["file"] == str(ds / "images" / data["images"][2]["file_name"])
    assert report["images_checked"] == 4 and report["images_with_problems"] == 3


def test_a_broken_json_is_one_line_and_exit_2(four_images, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    done = _check(*_explicit(four_images, bad), "--workers", "0")
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert done.stdout.startswith(f"train: split: [annotation file] {bad}: ") and "not valid JSON" in done.stdout
    assert done.stdout.count(str(bad)) == 1  # the loader's message named the file again: said twice
    assert "Traceback" not in done.stderr


def test_workers_and_in_process_give_the_same_report(four_images, tmp_path):
    ds = _copy(four_images, tmp_path / "ds")
    data = _break_three(ds)
    (ds / "panoptic" / data["annotations"][2]["file_name"]).unlink()  # image 3: no image and no PNG
    split = [Split("train", ds / "panoptic.json", ds / "images", ds / "panoptic")]
    in_process = check_splits(split, 0)
    assert check_splits(split, 2) == in_process
    assert in_process["by_kind"] == {"missing PNG": 1, "missing image": 1, "segment ids": 1, "size mismatch": 1}
    assert in_process["images_with_problems"] == 3


def _stuff_split_in_two(data: dict) -> int:
    """Give one image's second stuff segment the category of its first (two pieces of one stuff
    category, both still in the PNG); returns that image's id."""
    stuff = {c["id"] for c in data["categories"] if not c["isthing"]}
    for ann in data["annotations"]:
        segs = [s for s in ann["segments_info"] if s["category_id"] in stuff]
        if len(segs) >= 2:
            segs[1]["category_id"] = segs[0]["category_id"]
            return ann["image_id"]
    raise AssertionError("no image with two stuff segments in the generated dataset")


def test_what_opening_a_split_warns_of_is_listed_and_exit_stays_0(four_images, tmp_path):
    # Before: an image without an annotation (left out of training) and a stuff category split into
    # two segments were only log lines on stderr; the report and its JSON said nothing.
    ds = _copy(four_images, tmp_path / "ds")
    data = json.loads((ds / "panoptic.json").read_text())
    split_image = _stuff_split_in_two(data)
    data["images"].append({**data["images"][0], "id": 999, "file_name": "unlabelled.jpg"})
    (ds / "panoptic.json").write_text(json.dumps(data))
    out = tmp_path / "report.json"
    done = _check(*_explicit(ds), "--workers", "0", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    json_file = ds / "panoptic.json"
    # the JSON named once (before: "[warning] F: F: 1 image(s) ...")
    assert lines[0].startswith(f"train: split: [warning] {json_file}: 1 image(s) have a stuff "
                               f"category in several segments, e.g. image id {split_image!r}")
    assert lines[1].startswith(f"train: split: [warning] {json_file}: 1 of 5 image(s) have no "
                               "annotation and are left out")
    assert lines[2] == "checked 4 images (train 4): 0 with problems; 2 warning(s)"
    assert "WARNING" not in done.stderr  # listed once, in the report, not also as log lines
    report = json.loads(out.read_text())
    assert report["problems"] == [] and [w["kind"] for w in report["warnings"]] == ["warning"] * 2
    assert "999" in report["warnings"][1]["message"]
    strict = _check(*_explicit(ds), "--workers", "0", "--strict")
    assert strict.returncode == 2 and strict.stdout == done.stdout.replace(f"wrote {out}\n", "")


def test_a_train_split_that_filter_empty_would_empty_is_a_warning(four_images, tmp_path, capsys):
    # Every thing segment is a crowd (an exporter marking groups): before, data.check said nothing and
    # training with data=coco_panoptic_folder (filter_empty=true) stopped at its start.
    ds = _copy(four_images, tmp_path / "ds")
    data = json.loads((ds / "panoptic.json").read_text())
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            if seg["category_id"] in things:
                seg["iscrowd"] = 1
    (ds / "panoptic.json").write_text(json.dumps(data))
    done = _check_here(capsys, *_explicit(ds), "--workers", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"train: split: [warning] {ds / 'panoptic.json'}: no image has a non-crowd thing segment, so "
            "data.train.filter_empty=true") in done.stdout
    assert "data.train.filter_empty=false keeps every image" in done.stdout
    assert _check_here(capsys, *_explicit(ds), "--workers", "0", "--strict").returncode == 2
    clean = _check_here(capsys, *_explicit(four_images), "--workers", "0")
    assert "non-crowd thing" not in clean.stdout


SLOW = textwrap.dedent("""
    import sys, time
    from panfpn.data import check, dataset
    read = dataset.PanopticDataset.sample_problems
    def slow(self, index):
        print("reading", index, flush=True)
        time.sleep(0.5)
        return read(self, index)
    dataset.PanopticDataset.sample_problems = slow
    sys.exit(check.main(sys.argv[1:]))
""")


def test_ctrl_c_ends_the_check_and_its_workers_with_130(four_images, tmp_path):
    cmd = [sys.executable, "-c", SLOW, *_explicit(four_images), "--workers", "2",
           "--out", str(tmp_path / "report.json")]
    with started(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().startswith("reading")
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.splitlines()[-1].startswith("python -m panfpn.data.check: stopped by SIGINT after ")
        assert err.splitlines()[-1].endswith("images checked; no report written")
        assert "Traceback" not in err
        deadline = time.monotonic() + 10
        while live_group(proc.pid) and time.monotonic() < deadline:  # the pool's workers end too
            time.sleep(0.1)
        assert not live_group(proc.pid)
    assert not (tmp_path / "report.json").exists()


def test_report_is_written_when_the_reader_closes_stdout_early(four_images, tmp_path):
    # `python -m panfpn.data.check ... --out report.json | head -3`: the problem lines' print raised
    # BrokenPipeError before --out was written (a traceback, exit 1, and no report).
    ds = _copy(four_images, tmp_path / "ds")
    _break_three(ds)
    out = tmp_path / "report.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = run([sys.executable, "-m", "panfpn.data.check", *_explicit(ds), "--workers", "0", "--out", str(out)],
                   cwd=ROOT, env=ENV, timeout=120, stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2  # the problems' status, not a crash's
    assert json.loads(out.read_text())["images_with_problems"] == 3


def test_a_cityscapes_root_is_checked_as_training_reads_it(tmp_path, capsys):
    """`--root $CITYSCAPES_DATASET` after createPanopticImgs: its splits found, an image without
    ground truth a warning (exit 0), a leftImg8bit city missing named per city and per image."""
    from cityscapes_layout import write_cityscapes_root

    root = write_cityscapes_root(tmp_path / "cs", ["frankfurt_000000_000294", "lindau_000000_000019"])
    frankfurt = root / "leftImg8bit" / "val" / "frankfurt"
    shutil.copy(frankfurt / "frankfurt_000000_000294_leftImg8bit.png", frankfurt / "frankfurt_000001_000294_leftImg8bit.png")
    warned = _check_here(capsys, "--root", str(root), "--workers", "0")
    assert warned.returncode == 0, warned.stderr
    lines = warned.stdout.splitlines()
    assert lines[0].startswith(f"val: split: [warning] {root / 'gtFine' / 'cityscapes_panoptic_val.json'}: 1 images")
    assert "(per city: frankfurt (1))" in lines[0]
    assert lines[1:] == ["checked 2 images (val 2): 0 with problems; 1 warning(s)"]
    shutil.rmtree(root / "leftImg8bit" / "val" / "lindau")
    broken = _check_here(capsys, "--root", str(root), "--workers", "0")
    assert broken.returncode == 2, broken.stderr
    lines = broken.stdout.splitlines()
    assert lines[0].startswith(f"val: split: [missing images] {root / 'leftImg8bit' / 'val'}: 1 of the 2 images")
    assert "(per city: lindau (1))" in lines[0]
    assert lines[1].startswith("val: image id 'lindau_000000_000019': [missing image] "
                               f"{root / 'leftImg8bit' / 'val' / 'lindau' / 'lindau_000000_000019_leftImg8bit.png'}")
    assert lines[2:] == ["checked 2 images (val 2): 1 with problems; by kind: missing image 1, missing images 1"]


def test_a_cityscapes_root_without_create_panoptic_imgs_output_is_told_the_command(tmp_path):
    from panfpn.data.check import root_splits

    (tmp_path / "gtFine" / "val" / "frankfurt").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        root_splits(tmp_path)
    assert f"{tmp_path / 'gtFine' / 'cityscapes_panoptic_val.json'}" in str(err.value)
    assert str(err.value).endswith(f"; for Cityscapes, create its panoptic annotations first: csCreatePanopticImgs "
                                   f"--dataset-folder {tmp_path / 'gtFine'} --set-names train val")


def test_an_area_smaller_than_the_segments_pixels_is_a_problem(four_images, tmp_path):
    # an exporter's area (a polygon's, or a constant) below the PNG's pixel count: training ignores
    # it and evaluation now refuses it (the PQ reference scores IoUs above 1), so the check names it
    ds = _copy(four_images, tmp_path / "ds")
    data = json.loads((ds / "panoptic.json").read_text())
    seg = data["annotations"][1]["segments_info"][0]
    seg["area"] = 1
    data["annotations"][2]["segments_info"][0]["area"] += 7  # larger: accepted, as panopticapi does
    (ds / "panoptic.json").write_text(json.dumps(data))
    done = _check(*_explicit(ds), "--workers", "0")
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    image_id = data["images"][1]["id"]
    assert lines[0].startswith(f"train: image id {image_id!r}: [segment area] ")
    assert f"segments {seg['id']} (area 1, " in lines[0] and "than their pixels in the PNG" in lines[0]
    assert lines[1] == "checked 4 images (train 4): 1 with problems; by kind: segment area 1"


def test_a_json_width_height_unlike_the_files_is_a_problem_in_the_report(four_images, tmp_path):
    # Before: the check passed (exit 0) while the JSON gave another size than the image and its PNG
    ds = _copy(four_images, tmp_path / "ds")
    data = json.loads((ds / "panoptic.json").read_text())
    data["images"][1].update(width=640, height=480)
    data["images"][2].update(width=32)
    (ds / "images" / data["images"][2]["file_name"]).unlink()  # compared with its PNG instead
    (ds / "panoptic.json").write_text(json.dumps(data))
    out = tmp_path / "report.json"
    done = _check(*_explicit(ds), "--workers", "0", "--out", str(out))
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    image = ds / "images" / data["images"][1]["file_name"]
    png = ds / "panoptic" / data["annotations"][2]["file_name"]
    assert lines[0] == (f"train: image id {data['images'][1]['id']!r}: [json size] {image}: {ds / 'panoptic.json'}: "
                        f"image id {data['images'][1]['id']!r}: image {image} is width 64, height 48 (EXIF "
                        f"orientation applied) but the JSON says width 640, height 480; check the width/height "
                        f"in the annotation file")
    assert lines[1].startswith(f"train: image id {data['images'][2]['id']!r}: [missing image] ")
    assert lines[2].startswith(f"train: image id {data['images'][2]['id']!r}: [json size] {png}: ")
    assert f"panoptic PNG {png} is width 64, height 48 but the JSON says width 32, height 48" in lines[2]
    assert lines[3] == "checked 4 images (train 4): 2 with problems; by kind: json size 2, missing image 1"
    report = json.loads(out.read_text())
    assert [(p["image_id"], p["kind"], p["file"]) for p in report["problems"]] == [
        (data["images"][1]["id"], "json size", str(image)),
        (data["images"][2]["id"], "missing image", str(ds / "images" / data["images"][2]["file_name"])),
        (data["images"][2]["id"], "json size", str(png))]
