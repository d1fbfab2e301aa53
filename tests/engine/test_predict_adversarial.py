"""Odd inputs to tools/predict.py (both backends) and the standalone ONNX runner: what a user asks for
vs what they get. Each test failed before its fix (named in the test's comment)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from config_helpers import compose_config
from PIL import Image

from panfpn.data.image_files import list_image_files, output_stems
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.predict_run import predict_from_config, predict_images

from test_predict_outputs import StripesModel, _assert_json_lists_exactly_the_files

MODEL = ("model=panoptic_fpn_small", "model.roi_heads.box_head.test.score_thresh=0.0",
         "model.roi_heads.box_head.test.detections_per_image=4")


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random small model's checkpoint and its exported ONNX pipeline (~2 s)."""
    pytest.importorskip("onnxruntime")
    from hydra.utils import instantiate

    from panfpn.deploy.export import build_pipeline, export_pipeline_onnx
    from panfpn.modeling.build import build_model

    cfg = compose_config(MODEL, output_dir=tmp_path_factory.mktemp("run"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    folder = tmp_path_factory.mktemp("weights")
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    pipeline = build_pipeline(model, synthetic_metadata(), instantiate(cfg.data.val.transforms))
    export_pipeline_onnx(pipeline, folder / "model.onnx", metadata=synthetic_metadata())
    return folder / "model.pth", folder / "model.onnx"


def _predict(weights, inp, out, *extra):
    backend = "onnxruntime" if str(weights).endswith(".onnx") else "torch"
    cfg = compose_config([*MODEL, f"weights={weights}", f"++predict.input={inp}", f"++predict.output_dir={out}",
                          f"predict.backend={backend}", "predict.progress_bar=false", "predict.batch_size=1",
                          "predict.overlay=false", "device=cpu", *extra], output_dir=out.parent / "run")
    return predict_from_config(cfg)


def test_a_path_name_equal_to_another_inputs_stem_gets_its_own_file(tmp_path):
    # Before: a.jpg and a.png became a_jpg / a_png, and a_jpg.png kept a_jpg: two images, one PNG
    # (predict stopped with "prediction PNG a_jpg.png written twice" after writing it once).
    assert output_stems([Path("/d/a.jpg"), Path("/d/a.png"), Path("/d/a_jpg.png")]) == ["a_jpg~2", "a_png", "a_jpg"]
    stems = output_stems([Path("/d/x/a.jpg"), Path("/d/y/a.jpg"), Path("/d/x__a.jpg"), Path("/d/z/x__a.jpg")])
    assert len(set(stems)) == 4
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for k, name in enumerate(["a.jpg", "a.png", "a_jpg.png"]):
        Image.fromarray(_rgb(12, 16 + k)).save(inp / name)
    result = predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out, progress=False)
    assert len(result["predicted"]) == 3
    data = _assert_json_lists_exactly_the_files(out, expected_count=3)
    widths = {Path(i["path"]).name: i["width"] for i in data["images"]}
    assert widths == {"a.jpg": 16, "a.png": 17, "a_jpg.png": 18}


def test_names_differing_only_in_case_get_distinct_outputs():
    # Before: x/A.jpg and y/a.jpg wrote A.png and a.png: one file on macOS / Windows file systems.
    stems = output_stems([Path("/d/x/A.jpg"), Path("/d/y/a.jpg"), Path("/d/b.jpg")])
    assert len({s.casefold() for s in stems}) == 3 and stems[2] == "b"


def _odd_inputs(folder: Path) -> None:
    folder.mkdir()
    rgb = _rgb()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")  # mode I;16
    Image.fromarray(rgb).save(folder / "photo.jpg")
    Image.fromarray(rgb).save(folder / "no_suffix", format="PNG")
    (folder / "empty.jpg").write_bytes(b"")


def test_onnx_backend_reads_and_reports_inputs_like_torch(exported, tmp_path):
    # Before, with predict.backend=onnxruntime: a 16-bit PNG was clipped to black and white by
    # Pillow's convert("RGB") (other segments than the torch backend's), a file without an image
    # suffix was predicted (torch skips it) and no failed.txt / failed.json was written.
    pth, onnx = exported
    _odd_inputs(tmp_path / "in")
    for weights, name in ((pth, "torch"), (onnx, "onnx")):
        _predict(weights, tmp_path / "in", tmp_path / name)
    want, got = (json.loads((tmp_path / d / "panoptic.json").read_text()) for d in ("torch", "onnx"))
    assert [a["file_name"] for a in got["annotations"]] == ["grey16.png", "photo.png"]
    for g, w in zip(got["annotations"], want["annotations"], strict=True):
        assert [(s["id"], s["category_id"], s["area"]) for s in g["segments_info"]] == \
            [(s["id"], s["category_id"], s["area"]) for s in w["segments_info"]]
        np.testing.assert_array_equal(*(np.asarray(Image.open(tmp_path / d / "panoptic" / g["file_name"]))
                                        for d in ("onnx", "torch")))
    assert (tmp_path / "onnx" / "failed.txt").read_text() == (tmp_path / "torch" / "failed.txt").read_text()
    assert len(json.loads((tmp_path / "onnx" / "failed.json").read_text())["failed"]) == 2


def test_onnx_backend_reports_the_run_as_the_torch_backend(exported, tmp_path):
    # Before: the onnxruntime backend ended with "predicted N image(s) with onnxruntime into DIR" only:
    # neither the images skipped as done nor the unreadable inputs were counted, and failed.txt was not
    # pointed to, where the torch backend says all three.
    pth, onnx = exported
    _odd_inputs(tmp_path / "in")
    lines = {}
    for weights, name in ((pth, "torch"), (onnx, "onnx")):
        out = tmp_path / name
        for run in (1, 2):  # the second run skips the images the first predicted
            seen = len((out / "log.txt").read_text().splitlines()) if out.exists() else 0
            _predict(weights, tmp_path / "in", out)
            new = [line.split("] ", 1)[1] for line in (out / "log.txt").read_text().splitlines()[seen:]]
            lines[name, run] = [line.replace(" with onnxruntime", "").replace(str(out), "OUT")
                                for line in new if line.startswith(("predicted ", "2 input"))]
    assert lines["onnx", 1] == lines["torch", 1] == [
        "predicted 2 image(s), skipped 0 existing, 2 failed; results in OUT",
        "2 input(s) could not be read; listed in OUT/failed.txt"], lines
    assert lines["onnx", 2] == lines["torch", 2] and "skipped 2 existing" in lines["onnx", 2][0], lines


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tools_predict_exits_1_when_no_input_could_be_read(exported, tmp_path, backend):
    # Before: tools/predict.py on inputs none of which could be read (the standalone runner too)
    # exited 0 with an empty panoptic.json, as if it had done the job; tools/merge.py exits 1 when
    # every image is skipped. Now: exit 1 and a line naming failed.txt; one readable input is exit 0.
    import os
    import sys

    from process_helpers import run as run_in_group

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    weights = exported[1] if backend == "onnxruntime" else exported[0]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def predict(out):
        model = MODEL if backend == "torch" else ()  # the graph fixed them: the onnx backend refuses them
        return run_in_group([sys.executable, str(root / "tools/predict.py"), *model, f"weights={weights}",
                             f"predict.input={tmp_path / 'in'}", f"predict.output_dir={out}",
                             f"predict.backend={backend}", "predict.overlay=false", "device=cpu",
                             f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True,
                            timeout=300)

    proc = predict(tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tools/predict.py: no image predicted: every input (1) could not be read, listed in "
        f"{tmp_path / 'out' / 'failed.txt'}"), proc.stderr[-3000:]
    Image.fromarray(_rgb()).save(tmp_path / "in" / "good.png")
    assert predict(tmp_path / "out2").returncode == 0


def test_standalone_runner_exits_1_when_no_input_could_be_read(exported, tmp_path, capsys):
    from panfpn.deploy import onnx_runner

    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert onnx_runner.main([str(exported[1]), str(tmp_path / "broken.jpg"), "--out", str(tmp_path / "o")]) == 1
    assert "no image written: every input (1) could not be read" in capsys.readouterr().err
    Image.fromarray(_rgb()).save(tmp_path / "good.png")
    assert onnx_runner.main([str(exported[1]), str(tmp_path / "broken.jpg"), str(tmp_path / "good.png"),
                             "--out", str(tmp_path / "o2")]) == 0


def test_too_many_pixels_is_skipped_not_a_traceback(exported, tmp_path, monkeypatch):
    # Before: Pillow's DecompressionBombError (> 2 x Image.MAX_IMAGE_PIXELS, e.g. a 14000 x 14000
    # scan) escaped the onnxruntime backend and the standalone runner: a traceback, and no JSON for
    # the images already predicted. The torch backend skipped it; now both do.
    from panfpn.deploy import onnx_runner

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(_rgb(8, 8)).save(inp / "a_small.png")
    Image.fromarray(_rgb(40, 60)).save(inp / "b_huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2400 pixels > 2 x 1000
    result = _predict(exported[1], inp, tmp_path / "out")
    assert result["predicted"] == ["a_small"] and "DecompressionBombError" in result["failed"][0]["error"]
    with pytest.raises(ValueError, match="DecompressionBombError"):
        onnx_runner.read_rgb(inp / "b_huge.png")


def test_standalone_runner_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    # Before: 2 grey levels left of 256 (Pillow clips I;16 to 0 / 255 in convert("RGB")).
    from panfpn.data.image_io import read_image
    from panfpn.deploy.onnx_runner import read_rgb

    grey = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), read_image(tmp_path / "g.png"))


def test_standalone_runner_cli_skips_bad_files_and_refuses_clashing_names(exported, tmp_path, capsys):
    # Before: one unreadable file among the inputs was a ValueError traceback after the others
    # were predicted, and no panoptic.json was written; a.jpg + a.png was a traceback saying
    # "pass distinct stems", which the command line has no way to do.
    from panfpn.deploy import onnx_runner

    Image.fromarray(_rgb()).save(tmp_path / "a.jpg")
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    assert onnx_runner.main([str(exported[1]), str(tmp_path / "a.jpg"), str(tmp_path / "broken.jpg"),
                             "--out", str(out)]) == 0
    data = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["a.png"] and (out / "panoptic" / "a.png").is_file()
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(exported[1]), str(tmp_path / "a.jpg"), str(tmp_path / "a.png"), "--out", str(out)])
    assert exit_info.value.code == 2 and "a.png" in capsys.readouterr().err


class _FailingSession:
    """An onnxruntime session whose ``fail_at``-th run raises, like an out-of-memory or a Ctrl-C."""

    def __init__(self, session, fail_at: int, error: BaseException):
        self.session, self.fail_at, self.error, self.calls = session, fail_at, error, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return self.session.run(*args)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("onnxruntime: out of memory")])
def test_runner_stopped_mid_run_lists_what_it_wrote(exported, tmp_path, error):
    # Before: the JSON was written only after the last image, so a Ctrl-C or an error on image 3
    # left 2 PNGs and no panoptic.json (or the previous run's JSON, listing other images).
    from panfpn.deploy import onnx_runner

    paths = []
    for k in range(3):
        Image.fromarray(_rgb(seed=k)).save(tmp_path / f"p{k}.png")
        paths.append(tmp_path / f"p{k}.png")
    session = _FailingSession(onnx_runner.open_session(exported[1]), 3, error)
    with pytest.raises(type(error)):
        onnx_runner.predict_files(session, paths, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["p0.png", "p1.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "panoptic").iterdir()) == ["p0.png", "p1.png"]


def test_onnx_backend_refuses_options_it_cannot_honour(exported, tmp_path, monkeypatch):
    # Before: predict.semantic=true only logged a warning (no semantic PNGs), and device=cuda ran
    # on the CPU provider: both silently not what was asked.
    import onnxruntime as ort

    from panfpn.engine.predict_onnx import onnx_providers

    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="predict.semantic"):
        _predict(exported[1], tmp_path / "a.png", tmp_path / "out", "predict.semantic=true")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="device.*onnxruntime-gpu"):
        onnx_providers("cuda")
    assert onnx_providers("auto") == onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})


def test_onnx_backend_keeps_earlier_images_and_skips_done_ones(exported, tmp_path):
    # Before, with predict.backend=onnxruntime: predict.overwrite=false was ignored (every image
    # redone) and panoptic.json was replaced by this run's images only, so the PNGs of an earlier
    # run into the folder were no longer listed (the torch backend keeps them, docs/predict.md).
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.fromarray(_rgb(seed=k)).save(inp / name)
    first = _predict(exported[1], f"[{inp / 'a.png'},{inp / 'b.png'}]", out)
    assert first["predicted"] == ["a", "b"]
    again = _predict(exported[1], f"[{inp / 'a.png'},{inp / 'b.png'}]", out)
    assert again["predicted"] == [] and again["skipped"] == ["a", "b"]
    other = _predict(exported[1], inp / "c.png", out)
    assert other["predicted"] == ["c"]
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in data["annotations"]) == sorted(p.name for p in (out / "panoptic").iterdir())
    assert sorted(a["image_id"] for a in data["annotations"]) == ["a", "b", "c"]
    assert [i["id"] for i in data["images"]] == [a["image_id"] for a in data["annotations"]]
    redo = _predict(exported[1], inp / "a.png", out, "predict.overwrite=true")
    assert redo["predicted"] == ["a"]


def test_output_folder_inside_the_input_folder_is_not_read_back(exported, tmp_path):
    # Before: predict.input=photos predict.output_dir=photos/preds predict.recursive=true predicted,
    # on the rerun, its own panoptic PNGs and overlays as photos; the name clash with them renamed
    # a.jpg's outputs to a_jpg.png, and log.txt / panoptic.json / failed.* were listed as failures.
    inp = tmp_path / "photos"
    inp.mkdir()
    Image.fromarray(_rgb()).save(inp / "a.jpg")
    for _ in range(2):
        result = _predict(exported[0], inp, inp / "preds", "predict.recursive=true", "predict.overlay=true")
    assert result["predicted"] == [] and result["skipped"] == ["a"] and result["failed"] == []
    assert sorted(p.name for p in (inp / "preds" / "panoptic").iterdir()) == ["a.png"]
    # the output folder is the input folder itself: the photos are still read, our files are not
    result = _predict(exported[0], inp, inp, "predict.overlay=true")
    assert result["predicted"] == ["a"] and result["failed"] == []


def test_runner_outputs_get_the_permissions_of_a_plain_write(exported, tmp_path):
    # Before: the runner's atomic writes renamed mkstemp's 0600 files into place, so with umask 022
    # panoptic.json and the PNGs were unreadable to the group and others (torch backend: 0644).
    import os

    from panfpn.deploy import onnx_runner

    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    old = os.umask(0o022)
    try:
        onnx_runner.predict_files(onnx_runner.open_session(exported[1]), [tmp_path / "a.png"], tmp_path / "out")
    finally:
        os.umask(old)
    for path in (tmp_path / "out" / "panoptic.json", tmp_path / "out" / "panoptic" / "a.png"):
        assert path.stat().st_mode & 0o777 == 0o644, path


@pytest.mark.parametrize("override", ["model.roi_heads.box_head.test.score_thresh=0.7",
                                      "data.val.transforms.short_edge_lengths=[64]"])
def test_onnx_backend_refuses_model_and_resize_overrides(exported, tmp_path, override):
    # Before: with predict.backend=onnxruntime a command-line score threshold or test resize was
    # silently ignored (the graph fixes both at export): the user got the exported settings' result.
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    cfg = compose_config([*MODEL, f"weights={exported[1]}", f"++predict.input={tmp_path / 'a.png'}",
                          f"++predict.output_dir={tmp_path / 'out'}", "predict.backend=onnxruntime",
                          "predict.overlay=false", "device=cpu"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=override.split("=")[0].replace("[", r"\[")):
        predict_from_config(cfg, overrides=[override])
    assert not (tmp_path / "out" / "panoptic.json").exists()


def test_subfolders_not_searched_are_reported(tmp_path, caplog):
    # Before: without predict.recursive the images of subfolders were left out without a word, a
    # folder holding only subfolders was "not a file, a folder with files, or a glob" with no hint,
    # and with it a link to a folder (not followed) was left out silently.
    import logging

    (tmp_path / "photos" / "day1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "photos" / "a.jpg")
    Image.fromarray(_rgb()).save(tmp_path / "photos" / "day1" / "b.jpg")
    Image.fromarray(_rgb()).save(tmp_path / "elsewhere" / "c.jpg")
    (tmp_path / "photos" / "day2").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        assert [p.name for p in list_image_files(tmp_path / "photos")] == ["a.jpg"]
        assert "2 subfolder(s) not searched (day1, day2): predict.recursive=true" in caplog.text
        caplog.clear()
        assert [p.name for p in list_image_files(tmp_path / "photos", recursive=True)] == ["a.jpg", "b.jpg"]
        assert "1 subfolder(s) not searched (day2): links to folders are not followed" in caplog.text
    (tmp_path / "photos" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="predict.recursive=true"):
        list_image_files(tmp_path / "photos")


def test_a_datasets_ground_truth_in_the_output_folder_is_never_overwritten(exported, tmp_path, capsys):
    # Before: predict.input=synth/images predict.output_dir=synth on a synthetic dataset (its layout
    # is panoptic.json + panoptic/, as predict's) took the ground truth for an earlier run's
    # predictions: with overlays on, every GT PNG and the GT JSON were overwritten silently; with
    # predict.overlay=false the images counted as done and the GT was listed as the predictions.
    # The standalone runner overwrote them too.
    from panfpn.data.synthetic import generate_dataset
    from panfpn.deploy import onnx_runner

    root = generate_dataset(tmp_path / "synth", num_images=2, seed=1)
    before = {p: p.read_bytes() for p in [root / "panoptic.json", *sorted((root / "panoptic").iterdir())]}
    images = list_image_files(root / "images")
    for overlay, overwrite in ((True, False), (False, False), (True, True)):
        with pytest.raises(ValueError, match="not a prediction JSON.*ground truth"):
            predict_images(StripesModel(), images, synthetic_metadata(), root, overlay=overlay, overwrite=overwrite,
                           progress=False)
    with pytest.raises(SystemExit):
        onnx_runner.main([str(exported[1]), *map(str, images), "--out", str(root)])
    assert "ground truth" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_tools_predict_refuses_a_datasets_ground_truth_folder_before_writing_there(exported, tmp_path, backend,
                                                                                   overwrite):
    # Before: tools/predict.py predict.output_dir=<a synthetic dataset> loaded the model, wrote log.txt
    # and overlays/ into the dataset folder, then stopped with a ValueError traceback (exit 1), not the
    # one line and exit 2 of a bad input (a ConfigError naming predict.output_dir).
    from panfpn.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "synth", num_images=2, seed=1)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    weights = exported[1] if backend == "onnxruntime" else exported[0]
    with pytest.raises(ConfigError, match="'predict.output_dir': .*not a prediction JSON.*ground truth"):
        _predict(weights, root / "images", root, "predict.overlay=true", f"predict.overwrite={overwrite}")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_tools_predict_refuses_an_unreadable_output_json_naming_the_key(exported, tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "panoptic.json").write_text("{not json")
    with pytest.raises(ConfigError, match="'predict.output_dir': .*predict.overwrite=true"):
        _predict(exported[0], tmp_path / "a.png", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["panoptic.json"]


def test_an_input_renamed_by_a_new_name_clash_is_listed_once(tmp_path):
    # Before: photos/a.jpg predicted as 'a', then photos/ + more/ (more/a.jpg too) renamed it
    # photos__a_jpg; the first run's entry 'a' was kept as "an image not in this run's input", so
    # the JSON listed photos/a.jpg twice, under two image ids.
    from test_predict_outputs import _photos

    _photos(tmp_path / "photos", ["a.jpg"])
    _photos(tmp_path / "more", ["a.jpg"])
    out = tmp_path / "out"
    predict_images(StripesModel(), list_image_files(tmp_path / "photos"), synthetic_metadata(), out, progress=False)
    predict_images(StripesModel(), list_image_files([tmp_path / "photos", tmp_path / "more"]), synthetic_metadata(),
                   out, progress=False)
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(i["id"] for i in data["images"]) == ["more__a_jpg", "photos__a_jpg"]
    assert [a["image_id"] for a in data["annotations"]] == [i["id"] for i in data["images"]]


def test_standalone_runner_gives_cityscapes_files_the_ids_predict_gives():
    # Before: the runner's JSON named frankfurt_000000_000019_leftImg8bit.png by its stem, while
    # tools/predict.py (predict.image_id=auto) and cityscapes_panoptic_val.json use
    # frankfurt_000000_000019: the runner's predictions matched no ground-truth image.
    from panfpn.data.image_ids import image_ids
    from panfpn.deploy.onnx_runner import default_image_id

    for names in (["frankfurt_000000_000019_leftImg8bit.png", "lindau_000001_000019_leftImg8bit.png"],
                  ["000000000139.jpg", "000000000285.jpg"], ["1.jpg", "001.jpg"], ["a.jpg", "000001.jpg"]):
        paths = [Path(n) for n in names]
        stems = [p.stem for p in paths]
        assert default_image_id(stems) == image_ids(paths, stems, "auto"), names


def test_onnx_backend_names_the_speed_options_it_does_not_use(caplog):
    """predict.batch_size / num_workers / json_every ... typed with predict.backend=onnxruntime were
    ignored without a word (they change no result: the backend runs one image at a time)."""
    import logging

    from panfpn.engine.predict_onnx import refuse_exported_settings

    with caplog.at_level(logging.WARNING, logger="panfpn"):
        refuse_exported_settings(["predict.batch_size=8", "predict.json_every=5", "predict.overwrite=true"])
    text = caplog.text
    assert "predict.batch_size=8" in text and "predict.json_every=5" in text, text
    assert "predict.overwrite" not in text  # honoured by this backend
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        refuse_exported_settings(["predict.overwrite=true"])
    assert "no effect" not in caplog.text


def test_onnx_backend_warns_of_overlays_only_when_asked_for_them(exported, tmp_path):
    """The documented command (weights=model.onnx predict.backend=onnxruntime predict.input=photos/)
    warned "predict.overlay is ignored" on every run: predict.overlay is true by default."""
    import logging

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(inp / "a.png")
    for typed, level in (([], logging.INFO), (["predict.overlay=true"], logging.WARNING)):
        cfg = compose_config([*MODEL, f"weights={exported[1]}", f"++predict.input={inp}",
                              f"++predict.output_dir={tmp_path / 'out'}", "predict.backend=onnxruntime",
                              "predict.progress_bar=false", "predict.overwrite=true", "device=cpu", *typed],
                             output_dir=tmp_path / "run")
        assert cfg.predict.overlay is True
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.INFO)  # the panfpn logger does not propagate once set up
        handler.emit = records.append
        logging.getLogger("panfpn").addHandler(handler)
        try:
            predict_from_config(cfg, overrides=["predict.backend=onnxruntime", *typed])
        finally:
            logging.getLogger("panfpn").removeHandler(handler)
        said = [r for r in records if "no overlays" in r.getMessage()]
        assert [r.levelno for r in said] == [level], typed
        assert ("predict.overlay is ignored" in said[0].getMessage()) == bool(typed)


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_a_missing_or_corrupt_model_file_is_a_message_not_a_traceback(exported, tmp_path, capsys, content):
    # Before: onnxruntime's NoSuchFile / InvalidProtobuf reached the user as a traceback (exit 1),
    # from the standalone runner and from predict.backend=onnxruntime alike.
    from panfpn.deploy import onnx_runner

    model = tmp_path / "model.onnx"
    if content is not None:
        model.write_bytes(content)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(model), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and str(model) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=f"'weights': {model}"):
        _predict(model, tmp_path / "a.png", tmp_path / "out2")


def test_onnx_backend_names_the_file_of_another_kind(exported, tmp_path):
    # Before: an ONNX file without panfpn's metadata (a network-scope export) was a ValueError
    # traceback from tools/predict.py; the standalone runner already said it in one line.
    from test_export_adversarial import _onnx_file

    model = _onnx_file(tmp_path / "network.onnx")
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match=r"'weights': .*network.onnx: the ONNX model has no 'panfpn' metadata"):
        _predict(model, tmp_path / "a.png", tmp_path / "out")


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_an_exported_file_given_to_the_torch_backend_names_the_onnx_backend(tmp_path, suffix):
    # Before: weights=model.onnx (predict.backend left at torch) listed every checkpoint format
    # weights= accepts, not that the exported file runs with predict.backend=onnxruntime.
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"x")
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    cfg = compose_config([*MODEL, f"weights={model}", f"++predict.input={tmp_path / 'a.png'}", "device=cpu"],
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="predict.backend=onnxruntime"):
        predict_from_config(cfg)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_an_output_folder_that_is_a_file_is_refused_before_predicting(exported, tmp_path, backend):
    # Before: predict.output_dir naming a file was a FileExistsError traceback (exit 1).
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    (tmp_path / "taken").write_text("a file")
    weights = exported[1] if backend == "onnxruntime" else exported[0]
    with pytest.raises(ConfigError, match="'predict.output_dir': .*taken is a file"):
        _predict(weights, tmp_path / "a.png", tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "a file"


def test_an_output_folder_without_write_permission_is_refused(tmp_path, capsys, exported):
    # Before: a read-only --out / predict.output_dir was a PermissionError traceback.
    import os

    from panfpn.deploy import onnx_runner
    from panfpn.engine.output_folder import check_writable_folder

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(ConfigError, match="'predict.output_dir': cannot write into"):
            check_writable_folder(locked / "sub", "predict.output_dir")
        Image.fromarray(_rgb()).save(tmp_path / "a.png")
        with pytest.raises(SystemExit) as exit_info:
            onnx_runner.main([str(exported[1]), str(tmp_path / "a.png"), "--out", str(locked)])
        assert exit_info.value.code == 2 and "cannot write the results into" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_standalone_runner_refuses_an_out_that_is_a_file(exported, tmp_path, capsys):
    # Before: --out naming a file was a NotADirectoryError traceback.
    from panfpn.deploy import onnx_runner

    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(exported[1]), str(tmp_path / "a.png"), "--out", str(tmp_path / "a.png")])
    assert exit_info.value.code == 2 and "cannot write the results into" in capsys.readouterr().err


def test_standalone_runner_takes_folders_and_refuses_missing_paths(exported, tmp_path, capsys):
    # Before: a folder was "skipped ... IsADirectoryError" and a mistyped file "skipped ...
    # FileNotFoundError", both with exit status 0 and nothing predicted.
    from panfpn.deploy import onnx_runner

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.png"):
        Image.fromarray(_rgb()).save(photos / name)
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(exported[1]), str(photos / "a.jpg"), str(tmp_path / "typo.jpg"), "--out", str(photos)])
    assert exit_info.value.code == 2 and "no such file or folder: " + str(tmp_path / "typo.jpg") in capsys.readouterr().err
    assert not (photos / "panoptic").exists()
    for _ in range(2):  # the output folder is the input folder: its panoptic.json is not an input the second time
        assert onnx_runner.main([str(exported[1]), str(photos), "--out", str(photos)]) == 0
        assert "skipped" not in capsys.readouterr().err
    data = json.loads((photos / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["a.png", "b.png"]
    (photos / "empty").mkdir()
    with pytest.raises(SystemExit):
        onnx_runner.main([str(exported[1]), str(photos / "empty"), "--out", str(tmp_path / "o")])
    assert "holds no files" in capsys.readouterr().err


def test_standalone_runner_rerun_keeps_the_earlier_results_listed(exported, tmp_path):
    # Before: a second run into the same --out replaced panoptic.json by its own images: the
    # first run's PNGs stayed on disk but were no longer listed (panopticapi then reports those
    # images as missing). Now they stay listed, as tools/predict.py keeps them; an image redone
    # (same name) or a new image with an earlier image id replaces the earlier entry.
    from panfpn.deploy import onnx_runner

    for name in ("000001.png", "000002.png", "x.png"):
        Image.fromarray(_rgb(seed=len(name))).save(tmp_path / name)
    out = tmp_path / "out"
    onnx_runner.main([str(exported[1]), str(tmp_path / "000001.png"), str(tmp_path / "000002.png"), "--out", str(out)])
    onnx_runner.main([str(exported[1]), str(tmp_path / "x.png"), str(tmp_path / "000002.png"), "--out", str(out)])
    data = json.loads((out / "panoptic.json").read_text())
    assert [(a["file_name"], a["image_id"]) for a in data["annotations"]] == [
        ("000001.png", 1), ("x.png", "x"), ("000002.png", "000002")]
    assert sorted(i["id"] for i in data["images"] if isinstance(i["id"], int)) == [1]
    (out / "panoptic" / "000001.png").unlink()  # an entry whose PNG is gone is not kept
    onnx_runner.main([str(exported[1]), str(tmp_path / "x.png"), "--out", str(out)])
    data = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["000002.png", "x.png"]


def test_onnx_backend_logs_the_settings_fixed_at_export(exported, tmp_path, caplog):
    # Before: nothing said which thresholds the graph had baked in; the config's model.* keys
    # (e.g. from a config file) silently had no effect.
    import logging

    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO, logger="panfpn"):
        _predict(exported[1], tmp_path / "a.png", tmp_path / "out")
    assert "settings fixed at export" in caplog.text and "'score_thresh': 0.0" in caplog.text


def test_standalone_runner_ctrl_c_is_a_message_and_exit_130(exported, tmp_path, capsys, monkeypatch):
    # Before: Ctrl-C in the middle of a folder ended the command line with a KeyboardInterrupt
    # traceback (the JSON listing the images written was already saved).
    from panfpn.deploy import onnx_runner

    for k in range(3):
        Image.fromarray(_rgb(seed=k)).save(tmp_path / f"p{k}.png")
    real, calls = onnx_runner.run_image, []

    def run_or_stop(session, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(session, image)

    monkeypatch.setattr(onnx_runner, "run_image", run_or_stop)
    try:
        status = onnx_runner.main([str(exported[1]), *(str(tmp_path / f"p{k}.png") for k in range(3)),
                                   "--out", str(tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt left main()")
    assert status == 130
    assert "stopped by Ctrl-C" in capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["p0.png"]


def test_standalone_runner_refuses_names_differing_only_in_case(exported, tmp_path, capsys):
    # Before: a.jpg and A.png were both predicted; on macOS / Windows file systems A.png then
    # overwrote a.png while panoptic.json listed both (tools/predict.py compares ignoring case).
    from panfpn.deploy import onnx_runner

    Image.fromarray(_rgb()).save(tmp_path / "a.jpg")
    Image.fromarray(_rgb(seed=1)).save(tmp_path / "A.png")
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(exported[1]), str(tmp_path / "a.jpg"), str(tmp_path / "A.png"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "A.png" in capsys.readouterr().err
