"""tools/eval.py killed outright (SIGKILL, as the out-of-memory killer does) part way leaves none of
its prediction files where the official scripts look, and the next evaluation removes what it left
and writes the complete set.

Before: the killed run ran no cleanup, so predictions/panoptic_pred/, predictions/cityscapes_instances/
and semantic/ held the images done before the kill, and cityscapesScripts' instance-level script (which
walks every folder below CITYSCAPES_RESULTS) scored that partial set as the whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from config_helpers import compose_config
from process_helpers import live_group, started

pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
from cityscapes_layout import write_cityscapes_root  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ("frankfurt_000000_000294", "lindau_000001_000019", "munster_000002_000019")
PARTIAL = ".partial_predictions"
# tools/eval.py run as __main__ after this patch: the DataLoader worker stops before the third image
# (after writing a marker file), the first two are written by then; the test kills once they are.
RUNNER = textwrap.dedent("""
    import os, runpy, sys, time
    from pathlib import Path
    from panfpn.data.dataset import PanopticDataset
    _get = PanopticDataset.__getitem__
    def _blocking(self, index):
        if index >= 2:
            Path(os.environ['PANFPN_TEST_BUSY']).write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)
        return _get(self, index)
    PanopticDataset.__getitem__ = _blocking
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name='__main__')
""")


def _args(root: Path, weights: Path) -> list[str]:
    return ["experiment=cityscapes_r50", "model=panoptic_fpn_small", f"data.root={root}", f"weights={weights}",
            "data.val.transforms.short_edge_lengths=[32]", "data.val.transforms.max_size=64", "eval.report=false",
            "model.merge.score_thresh=0.0", "eval.save_predictions=true", "eval.save_semantic=true", "device=cpu"]


def _files(run: Path) -> dict[str, bytes]:
    """Every prediction file in place, by path below the run folder."""
    return {str(p.relative_to(run)): p.read_bytes() for folder in ("predictions", "semantic")
            for p in sorted((run / folder).rglob("*")) if p.is_file()}


def _kill_part_way(root: Path, weights: Path, run: Path, busy: Path) -> None:
    """Start tools/eval.py into ``run``, SIGKILL its process group once two images' files are written."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PANFPN_TEST_BUSY=str(busy))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", RUNNER, str(ROOT / "tools" / "eval.py"), *_args(root, weights),
           "data.num_workers=1", f"hydra.run.dir={run}"]
    with started(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 120
        # wherever this code puts them: semantic PNGs are the last files an image gets
        while not (busy.exists() and len(list(run.rglob("semantic/*.png"))) == 2):
            assert proc.poll() is None, f"eval ended before it was busy:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "eval never got busy"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while live_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group(proc.pid) == []


def _official_finds(predictions: Path, frame: str, monkeypatch) -> str | None:
    """The prediction file cityscapesScripts' instance-level evaluator (CITYSCAPES_RESULTS=``predictions``)
    takes for ``frame``; None where it finds none (it prints an error and exits)."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as inst_eval

    monkeypatch.setattr(inst_eval.args, "predictionPath", str(predictions.resolve()))
    monkeypatch.setattr(inst_eval.args, "predictionWalk", None)
    gt = f"/gtFine/val/{frame.split('_')[0]}/{frame}_gtFine_instanceIds.png"
    try:
        return inst_eval.getPrediction(gt, inst_eval.args)
    except SystemExit:  # printError: "Found no prediction for ground truth ..."
        return None


def test_an_evaluation_killed_part_way_leaves_no_prediction_file_in_place(tmp_path, monkeypatch):
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.modeling.build import build_model

    root = write_cityscapes_root(tmp_path / "cityscapes", FRAMES)
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(compose_config(["experiment=cityscapes_r50", "model=panoptic_fpn_small",
                                                     "weights=null"])).state_dict()}, weights)
    run = tmp_path / "cs_eval"
    cfg = compose_config(_args(root, weights) + ["data.num_workers=0"], output_dir=run)
    evaluate_from_config(cfg)  # a complete evaluation: the set the killed one's start removes
    complete = _files(run)
    assert sorted(complete) == sorted(
        ["predictions/panoptic_pred.json"] + [f"predictions/panoptic_pred/{f}.png" for f in FRAMES]
        + [f"semantic/{f}.png" for f in FRAMES] + [f"predictions/cityscapes_instances/{f}_pred.txt" for f in FRAMES]
        + [k for k in complete if k.startswith("predictions/cityscapes_instances/masks/")])
    assert not (run / PARTIAL).exists()

    _kill_part_way(root, weights, run, tmp_path / "busy")
    assert _files(run) == {}  # nothing in place: no PNG, no text file or mask, no panoptic_pred.json
    partial = run / PARTIAL
    assert sorted(p.name for p in (partial / "semantic").iterdir()) == [f"{f}.png" for f in FRAMES[:2]]
    assert len(list((partial / "predictions" / "cityscapes_instances").glob("*_pred.txt"))) == 2
    # the official script pointed at the predictions folder does not see the killed run's files,
    # which it would take from the hidden folder were it below the folder it is pointed at
    for frame in FRAMES[:2]:
        assert _official_finds(run / "predictions", frame, monkeypatch) is None
        found = _official_finds(partial, frame, monkeypatch)
        assert found is not None and Path(found).name == f"{frame}_pred.txt"

    left = len([p for p in partial.rglob("*") if p.is_file()])
    evaluate_from_config(cfg)  # the next evaluation: removes what the killed one left, writes the whole set
    assert not partial.exists()
    assert _files(run) == complete  # names and contents as the first complete evaluation's
    log = (run / "log.txt").read_text()
    assert f"removed {partial}: {left} file(s) of an evaluation killed before every image was scored" in log, log
    for frame in FRAMES:
        found = _official_finds(run / "predictions", frame, monkeypatch)
        assert found == str((run / "predictions" / "cityscapes_instances" / f"{frame}_pred.txt").resolve())


def test_a_users_file_in_a_filled_folder_is_kept_through_a_kill_and_the_next_run(tmp_path):
    """A file of another kind in a folder the evaluation fills (moved aside with it while it is
    filled) is put back by the next evaluation after a kill, and renamed back with the folder."""
    from panfpn.evaluation.earlier_outputs import (fill_aside, move_predictions_into_place,
                                                   remove_earlier_predictions, remove_killed_evaluations_files)

    run = tmp_path / "run"
    notes = run / "predictions" / "cityscapes_instances" / "notes.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    (notes.parent / f"{FRAMES[0]}_pred.txt").write_text("")  # an earlier evaluation's
    flags = {"save_predictions": True, "save_semantic": True}
    assert remove_earlier_predictions(run, **flags) == 1
    fill_aside(run, **flags)
    aside = run / PARTIAL / "predictions" / "cityscapes_instances"
    assert not notes.parent.exists() and (aside / "notes.md").read_text() == "mine"
    (aside / f"{FRAMES[1]}_pred.txt").write_text("")  # written part way, then the process is killed
    (aside / "masks").mkdir()
    (aside / "masks" / f"{FRAMES[1]}_0.png").write_bytes(b"png")
    (aside / "masks" / f".{FRAMES[1]}_1.png.abc123.tmp").write_bytes(b"half")  # a write cut short
    assert remove_killed_evaluations_files(run) == 3
    assert not (run / PARTIAL).exists()
    assert [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()] == [
        "predictions/cityscapes_instances/notes.md"]
    fill_aside(run, **flags)  # the next evaluation: fills the folder aside again, then puts it in place
    (aside / f"{FRAMES[0]}_pred.txt").write_text("")
    (run / PARTIAL / "semantic").mkdir(parents=True)
    (run / PARTIAL / "semantic" / f"{FRAMES[0]}.png").write_bytes(b"png")
    (run / PARTIAL / "predictions" / "panoptic_pred.json").write_text("{}")
    assert move_predictions_into_place(run, **flags) == [run / "semantic", run / "predictions" / "cityscapes_instances",
                                                          run / "predictions" / "panoptic_pred.json"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == [
        "predictions/cityscapes_instances/frankfurt_000000_000294_pred.txt",
        "predictions/cityscapes_instances/notes.md", "predictions/panoptic_pred.json", "semantic/frankfurt_000000_000294.png"]
    assert not (run / PARTIAL).exists() and notes.read_text() == "mine"
