"""tools/eval.py fills its prediction folders in ``<run dir>/.partial_predictions/`` and renames them
into place at the end; what would make those renames fail, or two evaluations share the folder, is
refused on one line before anything is evaluated or removed.

Before: ``predictions/`` linked to another disk ran the whole evaluation, then the rename failed
(EXDEV) and every prediction file was removed as a failed evaluation's (eval_results.json written);
a file or a link where a folder goes failed with a bare OSError; a second evaluation into the same
run folder removed the first one's folders being filled as those of a killed evaluation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from config_helpers import compose_config
from process_helpers import started

from panfpn.engine.config import ConfigError

OTHER_FS = Path("/dev/shm")  # a tmpfs on Linux: another file system than the test's tmp folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from panfpn.modeling.build import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(compose_config(["weights=null"])).state_dict()}, path)
    return path


def _evaluate(weights: Path, run: Path) -> dict:
    from panfpn.engine.eval_run import evaluate_from_config

    cfg = compose_config(["data.val.num_images=2", "data.val.height=64", "data.val.width=64", "data.num_workers=0",
                          "eval.max_images=null", "eval.report=false", "device=cpu", f"weights={weights}",
                          "eval.save_predictions=true", "eval.save_semantic=true"], output_dir=run)
    return evaluate_from_config(cfg)


def _other_file_system_folder(tmp_path: Path) -> Path:
    if not OTHER_FS.is_dir() or os.stat(OTHER_FS).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip(f"needs {OTHER_FS} on another file system than {tmp_path} to link predictions/ to")
    folder = OTHER_FS / f"panfpn_test_{os.getpid()}_{tmp_path.name}"
    folder.mkdir()
    return folder


def test_predictions_linked_to_another_disk_is_refused_before_evaluating(weights, tmp_path):
    other = _other_file_system_folder(tmp_path)
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "predictions").symlink_to(other)
        (other / "notes.md").write_text("mine")
        with pytest.raises(ConfigError, match=r"predictions is on another file system .* cannot cross file "
                                              r"systems") as err:
            _evaluate(weights, run)
        assert "\n" not in str(err.value)
        assert not (run / "eval_results.json").exists() and not (run / ".partial_predictions").exists()
        assert sorted(p.name for p in other.iterdir()) == ["notes.md"]
    finally:
        for f in other.iterdir():
            f.unlink()
        other.rmdir()


@pytest.mark.parametrize("what", ["file", "link"])
def test_a_file_or_a_link_where_a_prediction_folder_goes_is_refused(weights, tmp_path, what):
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    target = run / "predictions" / "panoptic_pred"
    if what == "file":
        target.write_text("mine")
        expected = r"predictions/panoptic_pred is a file where tools/eval.py writes the folder"
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "notes.md").write_text("mine")
        target.symlink_to(tmp_path / "elsewhere")
        expected = r"predictions/panoptic_pred is a symbolic link \(to .*elsewhere\): .*would replace the link"
    with pytest.raises(ConfigError, match=expected):
        _evaluate(weights, run)
    assert (target.read_text() if what == "file" else (target / "notes.md").read_text()) == "mine"
    assert not (run / "eval_results.json").exists() and not (run / ".partial_predictions").exists()


def test_a_second_evaluation_into_a_run_folder_being_filled_is_refused(weights, tmp_path):
    run = tmp_path / "run"
    filling = run / ".partial_predictions" / "semantic" / "0001.png"  # the first evaluation's, part way
    filling.parent.mkdir(parents=True)
    filling.write_bytes(b"png")
    holder = textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(run / ".partial_predictions.lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live evaluation into the folder holds it
        print('held', flush=True)
        time.sleep(120)
    """)
    with started([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"run is in use by another evaluation \(a live process holds "
                                              r".*\.partial_predictions\.lock\)"):
            _evaluate(weights, run)
        assert filling.read_bytes() == b"png"  # not removed as a killed evaluation's
    proc.wait(timeout=30)
    _evaluate(weights, run)  # the holder gone (killed: the kernel dropped its lock), the next one runs
    assert not (run / ".partial_predictions").exists()
    assert len(list((run / "semantic").glob("*.png"))) == 2


def test_a_stop_during_the_renames_leaves_no_results_of_this_run(weights, tmp_path, monkeypatch):
    """Ctrl-C while rank 0 syncs and renames the filled folders into place (os.sync can take seconds
    with many PNGs): the predictions are removed (no partial set), and no eval_results.json says the
    run was complete. Before, eval_results.json was written first and stayed, its predictions gone."""
    from panfpn.evaluation import partial_predictions

    def stopped():
        raise KeyboardInterrupt

    monkeypatch.setattr(partial_predictions.os, "sync", stopped)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _evaluate(weights, run)
    assert not (run / "eval_results.json").exists()
    assert ("it was stopped after every image was scored, while its prediction folders were renamed into place"
            in (run / "log.txt").read_text())
    assert [p for p in run.rglob("*") if p.is_file() and p.suffix in (".png", ".json")] == []
    monkeypatch.undo()
    _evaluate(weights, run)  # the next one completes: results and their predictions
    assert (run / "eval_results.json").is_file() and (run / "predictions" / "panoptic_pred.json").is_file()


def test_a_folder_made_in_the_way_during_the_run_keeps_the_complete_predictions_aside(weights, tmp_path,
                                                                                        monkeypatch):
    """The user makes predictions/panoptic_pred/ with a file in it while the evaluation runs: its
    rename into place fails (ENOTEMPTY) after every image was scored. The complete folders stay in
    .partial_predictions/, one line (a ConfigError: exit 2) names both paths and what to do, and the
    next evaluation removes them and starts afresh. Before: they were removed as those of an
    evaluation that "failed (OSError) before every image was scored"."""
    from panfpn.engine import eval_run

    run = tmp_path / "run"
    blocker = run / "predictions" / "panoptic_pred" / "mine.txt"
    printed = eval_run.format_results

    def user_makes_the_folder(metrics):  # after every image was scored, before the renames
        blocker.parent.mkdir(parents=True)
        blocker.write_text("mine")
        return printed(metrics)

    monkeypatch.setattr(eval_run, "format_results", user_makes_the_folder)
    with pytest.raises(ConfigError) as err:
        _evaluate(weights, run)
    partial, placed = run / ".partial_predictions", run / "predictions" / "panoptic_pred"
    line = str(err.value)
    assert "\n" not in line and isinstance(err.value.__cause__, OSError)
    assert f"{partial / 'predictions' / 'panoptic_pred'} could not be renamed to {placed} (Directory not empty)" in line
    assert f"kept in {partial}; move {placed} away" in line and "run the evaluation again" in line
    assert len(list((partial / "predictions" / "panoptic_pred").glob("*.png"))) == 2  # complete: both images
    assert (partial / "predictions" / "panoptic_pred.json").is_file()
    assert len(list((run / "semantic").glob("*.png"))) == 2  # renamed before: complete, in place
    assert blocker.read_text() == "mine" and not (run / "eval_results.json").exists()
    assert "removed the" not in (run / "log.txt").read_text()
    monkeypatch.undo()
    _evaluate(weights, run)  # the next one: removes the kept folders, fills and renames afresh
    assert not partial.exists() and (run / "eval_results.json").is_file()
    assert len(list(placed.glob("*.png"))) == 2 and blocker.read_text() == "mine"  # the user's file put back
    assert f"removed {partial}: " in (run / "log.txt").read_text()


def test_a_link_in_place_of_the_hidden_folder_is_refused(weights, tmp_path):
    """Its content is removed as a killed evaluation's: a link there (to a bigger disk, say) would
    have that disk's folder emptied; before, shutil.rmtree stopped on it with a bare OSError."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "notes.md").write_text("mine")
    (run / ".partial_predictions").symlink_to(tmp_path / "big")
    with pytest.raises(ConfigError, match=r"\.partial_predictions is a symbolic link or a file: .*remove it"):
        _evaluate(weights, run)
    assert (tmp_path / "big" / "notes.md").read_text() == "mine" and not (run / "eval_results.json").exists()


def test_a_users_file_that_cannot_be_put_back_is_one_line_naming_both(tmp_path):
    """A killed evaluation had moved predictions/panoptic_pred/ (with the user's notes.md) aside; the
    user made a new notes.md there since: the next evaluation names both files in a ConfigError
    (tools/eval.py's one line, exit 2), and neither file is lost. Before: a bare FileExistsError,
    a traceback."""
    from panfpn.evaluation.earlier_outputs import remove_killed_evaluations_files

    run = tmp_path / "run"
    aside = run / ".partial_predictions" / "predictions" / "panoptic_pred"
    aside.mkdir(parents=True)
    (aside / "notes.md").write_text("old")
    (aside / "0001.png").write_bytes(b"png")  # the killed evaluation's
    (run / "predictions" / "panoptic_pred").mkdir(parents=True)
    (run / "predictions" / "panoptic_pred" / "notes.md").write_text("new")
    with pytest.raises(ConfigError, match=r"cannot put .*notes.md back into .*panoptic_pred: .*notes.md exists"):
        remove_killed_evaluations_files(run)
    assert (aside / "notes.md").read_text() == "old"
    assert (run / "predictions" / "panoptic_pred" / "notes.md").read_text() == "new"


def test_predictions_bind_mounted_from_the_same_disk_is_refused_before_evaluating(weights, tmp_path):
    """A bind mount has the run folder's st_dev, but a rename across it fails (EXDEV) all the same:
    the check tries the rename itself. Needs the right to mount (root in a container that allows it)."""
    run, source = tmp_path / "run", tmp_path / "source"
    (run / "predictions").mkdir(parents=True)
    source.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(run / "predictions")], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {mounted.stderr.strip()}")
    try:
        assert os.stat(run / "predictions").st_dev == os.stat(run).st_dev  # what a device check would compare
        with pytest.raises(ConfigError, match=r"predictions is on another file system .* cannot cross file systems"):
            _evaluate(weights, run)
        assert not (run / "eval_results.json").exists()
        assert list(source.iterdir()) == []  # the probe's folder is gone
    finally:
        subprocess.run(["umount", str(run / "predictions")], check=True)
