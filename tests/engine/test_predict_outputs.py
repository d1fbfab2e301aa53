"""predict: after a kill -9 and a rerun the JSON lists exactly the outputs on disk; image ids follow
the dataset's naming (createPanopticImgs' Cityscapes ids are scored by cityscapesscripts)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.data.image_files import list_image_files, output_stems
from panfpn.data.panoptic_io import read_id_png
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.predict_run import predict_images


class StripesModel(torch.nn.Module):
    """Eval output (docs/interfaces.md section 3): a thing (label 0, score 0.75) on the left half,
    stuff (semantic label 1) on the right; when ``kill_at`` is set, SIGKILLs its own process at that
    forward call, like ``kill -9`` mid-run (earlier images' files are being written by threads)."""

    def __init__(self, kill_at: int | None = None, stuff_label: int = 1):
        super().__init__()
        self.calls, self.kill_at, self.stuff_label = 0, kill_at, stuff_label

    def forward(self, batch):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            os.kill(os.getpid(), 9)
        outputs = []
        for h, w in batch["orig_sizes"]:
            id_map = torch.full((h, w), 2, dtype=torch.int32)
            id_map[:, : w // 2] = 1
            sem = torch.full((h, w), self.stuff_label, dtype=torch.int64)
            sem[:, : w // 2] = 0
            segments = [{"id": 1, "isthing": True, "category": 0, "score": 0.75, "area": 0},
                        {"id": 2, "isthing": False, "category": self.stuff_label, "score": None, "area": 0}]
            outputs.append({"panoptic": (id_map, segments), "sem_seg": sem})
        return outputs


def _photos(folder: Path, names, size=(12, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)


KILLED_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_predict_outputs import StripesModel
    from panfpn.data.image_files import list_image_files
    from panfpn.data.synthetic import synthetic_metadata
    from panfpn.engine.predict_run import predict_images
    predict_images(StripesModel(kill_at={kill_at}), list_image_files({inp!r}), synthetic_metadata(),
                   {out!r}, batch_size=2, write_threads=2, progress=False{extra})
""")


def _run_killed(inp: Path, out: Path, kill_at: int, extra: str = "") -> None:
    from process_helpers import run as run_in_group  # here: the child imports this module without it

    code = KILLED_RUN.format(tests=str(Path(__file__).parent), kill_at=kill_at, inp=str(inp),
                             out=str(out), extra=extra)
    proc = run_in_group([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # really killed, not finished


def _assert_json_lists_exactly_the_files(out: Path, expected_count: int | None = None) -> dict:
    """After a (re)run: no temp file of an interrupted write is left, and the JSON lists exactly
    the PNGs and overlays on disk, each whole and agreeing with its entry."""
    assert not [p for p in out.rglob("*.tmp")]
    data = json.loads((out / "panoptic.json").read_text())
    listed = [a["file_name"] for a in data["annotations"]]
    on_disk = sorted(p.name for p in (out / "panoptic").iterdir())
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)
    assert sorted(f"{Path(n).stem}.jpg" for n in listed) == sorted(p.name for p in (out / "overlays").iterdir())
    for ann in data["annotations"]:  # each PNG is whole and agrees with its entry
        ids = set(np.unique(read_id_png(out / "panoptic" / ann["file_name"])).tolist()) - {0}
        assert ids == {s["id"] for s in ann["segments_info"]}
    assert [i["id"] for i in data["images"]] == [a["image_id"] for a in data["annotations"]]
    if expected_count is not None:
        assert len(listed) == expected_count
    return data


def test_rerun_after_kill_9_lists_exactly_the_outputs_on_disk(tmp_path):
    """Used to skip every image with any output and list only the rest (29 listed, 39 PNGs)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _photos(inp, [f"p{k:02d}.jpg" for k in range(14)])
    _run_killed(inp, out, kill_at=5)  # 4 batches = 8 images done or being written
    assert len(list((out / "panoptic").glob("p*.png"))) >= 4
    result = predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out,
                            batch_size=2, progress=False)
    assert len(result["predicted"]) + len(result["skipped"]) == 14
    data = _assert_json_lists_exactly_the_files(out, expected_count=14)
    assert [a["image_id"] for a in data["annotations"]] == [f"p{k:02d}" for k in range(14)]


def test_periodic_json_after_kill_9_never_lists_a_missing_file(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _photos(inp, [f"p{k:02d}.jpg" for k in range(14)])
    _run_killed(inp, out, kill_at=6, extra=", json_every=2")
    data = json.loads((out / "panoptic.json").read_text())
    assert len(data["annotations"]) >= 4  # written during the run, not only at its end
    for ann in data["annotations"]:
        stem = Path(ann["file_name"]).stem
        assert (out / "panoptic" / ann["file_name"]).is_file() and (out / "overlays" / f"{stem}.jpg").is_file()
    done = {a["image_id"] for a in data["annotations"]}
    result = predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out,
                            batch_size=2, json_every=2, progress=False)
    assert set(result["skipped"]) == done  # listed and complete: not redone
    _assert_json_lists_exactly_the_files(out, expected_count=14)


def test_missing_file_of_a_listed_image_is_redone(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _photos(inp, ["a.jpg", "b.jpg", "c.jpg"])
    predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out, progress=False)
    (out / "overlays" / "b.jpg").unlink()
    (out / "panoptic" / "c.png").unlink()
    result = predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out, progress=False)
    assert result["predicted"] == ["b", "c"] and result["skipped"] == ["a"]
    _assert_json_lists_exactly_the_files(out, expected_count=3)


def test_same_stem_in_one_folder_and_in_two_folders_never_share_a_file(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _photos(inp, ["a.jpg", "a.png", "x/000001.jpg", "y/000001.jpg"])
    predict_images(StripesModel(), list_image_files(inp, recursive=True), synthetic_metadata(), out,
                   progress=False)
    data = _assert_json_lists_exactly_the_files(out, expected_count=4)
    assert len({a["image_id"] for a in data["annotations"]}) == 4


def test_image_id_rules():
    from panfpn.data.image_ids import image_ids

    paths = [Path("x/frankfurt_000000_000019_leftImg8bit.png"), Path("y/lindau_000001_000042_leftImg8bit.jpg")]
    stems = output_stems(paths)
    expected = ["frankfurt_000000_000019", "lindau_000001_000042"]
    assert image_ids(paths, stems, "auto") == image_ids(paths, stems, "cityscapes") == expected
    assert image_ids(paths, stems, "stem") == stems == ["frankfurt_000000_000019_leftImg8bit",
                                                        "lindau_000001_000042_leftImg8bit"]
    assert image_ids(paths, stems, r"(?P<id>[a-z]+)_.*") == ["frankfurt", "lindau"]
    coco = [Path("val2017/000000000139.jpg"), Path("val2017/000000000285.jpg")]
    assert image_ids(coco, output_stems(coco), "auto") == image_ids(coco, output_stems(coco), "coco_int") == [139, 285]
    mixed = [coco[0], Path("holiday.jpg")]
    assert image_ids(mixed, output_stems(mixed), "auto") == ["000000000139", "holiday"]
    with pytest.raises(ConfigError, match="holiday.jpg does not follow"):
        image_ids(mixed, output_stems(mixed), "coco_int")
    twins = [Path("a/frankfurt_000000_000019_leftImg8bit.png"), Path("b/frankfurt_000000_000019_leftImg8bit.png")]
    with pytest.raises(ConfigError, match="both get image id 'frankfurt_000000_000019'"):
        image_ids(twins, output_stems(twins), "cityscapes")
    assert image_ids(twins, output_stems(twins), "auto") == output_stems(twins)  # falls back: unique
    with pytest.raises(ConfigError, match="needs a group"):
        image_ids(paths, stems, "[a-z]+")


def test_new_predict_keys_are_in_the_config_and_checked(tiny_cfg, tmp_path):
    from panfpn.engine.predict_run import predict_options

    opts = predict_options(tiny_cfg("predict.input=x.jpg", "predict.image_id=cityscapes", "predict.json_every=5",
                                    "predict.semantic=true"))
    assert (opts.image_id, opts.json_every, opts.semantic) == ("cityscapes", 5, True)
    with pytest.raises(ConfigError, match="predict.image_id.*regular expression.*'\\(unclosed'"):
        predict_options(tiny_cfg("predict.input=x.jpg", "predict.image_id='(unclosed'"))
    with pytest.raises(ConfigError, match="predict.json_every.*got 0"):
        predict_options(tiny_cfg("predict.input=x.jpg", "predict.json_every=0"))


def test_another_image_with_the_same_name_is_not_taken_for_done(tmp_path):
    out = tmp_path / "out"
    _photos(tmp_path / "a", ["x.jpg"])
    _photos(tmp_path / "b", ["x.jpg"], size=(10, 14))
    predict_images(StripesModel(), [tmp_path / "a" / "x.jpg"], synthetic_metadata(), out, progress=False)
    result = predict_images(StripesModel(), [tmp_path / "b" / "x.jpg"], synthetic_metadata(), out, progress=False)
    assert result["predicted"] == ["x"]  # b/x.jpg is another photo: predicted, not skipped
    data = _assert_json_lists_exactly_the_files(out, expected_count=1)
    assert data["images"][0]["path"] == str(tmp_path / "b" / "x.jpg") and data["images"][0]["height"] == 10


@pytest.mark.slow
def test_tools_predict_killed_with_sigkill_then_rerun(tiny_weights, tmp_path):
    """The user's case end to end: tools/predict.py killed with SIGKILL mid-run, then run again."""
    import signal
    import time

    from process_helpers import run as run_in_group, started

    inp, out = tmp_path / "in", tmp_path / "out"
    # 50 photos: killed at >= 10 written, 40 left (~40 ms each on 2 shared cores) against a 20 ms poll
    _photos(inp, [f"p{k:03d}.jpg" for k in range(50)], size=(32, 40))
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "tools" / "predict.py"), f"weights={tiny_weights}",
           f"predict.input={inp}", f"predict.output_dir={out}", "predict.batch_size=1", "predict.num_workers=0",
           "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    with started(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "panoptic").glob("p*.png"))) >= 10:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(list((out / "panoptic").glob("p*.png"))) < 50
    run_in_group(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = _assert_json_lists_exactly_the_files(out, expected_count=50)
    assert [a["image_id"] for a in data["annotations"]] == [f"p{k:03d}" for k in range(50)]
