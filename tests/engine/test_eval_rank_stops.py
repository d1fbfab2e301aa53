"""tools/eval.py under ``torchrun --nproc_per_node 2`` (gloo on CPU) when ONE rank is stopped or
fails during the evaluation loop: the job ends within seconds, rank 0 says on one stderr line what
happened to which rank, nothing is written as if complete (an earlier result is kept), no process
is left. Ctrl-C (SIGINT to torchrun's group, which passes it on to each rank: torchrun starts each in
a session of its own) ends every rank with 130 and one line.

Rank 1 reads its images 3, 4, 5 (contiguous shards of 6): a patch blocks its read of image 4 after
writing a marker file with its pid (the moment to signal it, never after a sleep); each rank's exit
status is written to ``rank<r>.exit`` beside it. torchrun's own exit status and report (a
``ChildFailedError`` table, a ``SignalException`` traceback on Ctrl-C) are torchrun's: the tests
look at what the ranks say.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from config_helpers import compose_config
from panfpn.data.build import synthetic_dataset
from panfpn.engine import rank_errors
from panfpn.utils.stop_signals import EndedElsewhere, Stopped
from process_helpers import alive, live_group, started

ROOT = Path(__file__).resolve().parents[2]
# Runs sys.argv[1] (a tool) as __main__ after the patch in $PANFPN_TEST_PATCH; leaves its pid and
# its exit status.
RUNNER = textwrap.dedent("""
    import os, runpy, sys
    open(os.path.join(os.environ['PANFPN_TEST_OUT'], 'rank' + os.environ['RANK'] + '.pid'), 'w').write(str(os.getpid()))
    exec(os.environ['PANFPN_TEST_PATCH'])
    sys.argv = sys.argv[1:]
    _status = 0
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as e:
        _status = e.code if isinstance(e.code, int) else 1
        raise
    except BaseException:
        _status = 'exception'
        raise
    finally:
        _exit = os.path.join(os.environ['PANFPN_TEST_OUT'], 'rank' + os.environ['RANK'] + '.exit')
        open(_exit, 'w').write(str(_status))
""")
# Rank 1's read of dataset image 4 writes the marker 'busy' (its pid) and waits there until
# stopped; so does rank 0's read of image 2 (its last) when $HOLD_RANK_0 is set.
BLOCK_ON_RANK_1 = textwrap.dedent("""
    import time as _time
    from pathlib import Path as _Path
    from panfpn.data.dataset import PanopticDataset
    _get = PanopticDataset.__getitem__
    def _blocking(self, index):
        if (os.environ.get('RANK'), index) in (('1', 4), ('0', 2) if os.environ.get('HOLD_RANK_0') else ()):
            if index == 4:
                _Path(os.environ['PANFPN_TEST_OUT'], 'busy.part').write_text(str(os.getpid()))
                _Path(os.environ['PANFPN_TEST_OUT'], 'busy.part').rename(_Path(os.environ['PANFPN_TEST_OUT'], 'busy'))
            while True:
                _time.sleep(0.05)
        return _get(self, index)
    PanopticDataset.__getitem__ = _blocking
""")
DATA = ["data.val.num_images=6", "data.val.height=64", "data.val.width=64", "eval.max_images=null",
        "data.num_workers=0", "device=cpu"]


def _as_rank(monkeypatch, rank, world=2):
    for name, value in [("is_multiprocess", True), ("get_world_size", world), ("get_rank", rank),
                        ("is_main_process", rank == 0)]:
        monkeypatch.setattr(rank_errors.du, name, lambda value=value: value)


def test_every_rank_ended_by_another_ranks_input_error_exits_2(tmp_path, monkeypatch):
    """Rank 1's bad image (an input error: it exits 2) ends rank 0 (its collective fails) and rank 2
    (torchrun's SIGTERM) with OtherRankFailedError whose exit status is 2, naming rank 1's error on
    one line; they leave no file of their own (rank 0 named rank 2's consequence as a cause). Rank
    0's own bad image, left in rank0_error.json, ends rank 1 the same way. Before: rank 0 exited 1,
    rank 1 / 2 raised their own consequence (a closed connection: exit 1, a traceback)."""
    from panfpn.data.bad_images import BadImageError

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    bad = "image id 5 of a.json: 000005.jpg: cannot read as an image"
    _as_rank(monkeypatch, 1, world=3)
    with pytest.raises(BadImageError), rank_errors.told_to_rank_0(tmp_path):
        raise BadImageError(bad)
    assert json.loads(rank_errors.error_file(tmp_path, 1).read_text())["input_error"] is True
    for rank, consequence in ((2, Stopped(signal.SIGTERM)), (0, RuntimeError("Connection closed by peer"))):
        _as_rank(monkeypatch, rank, world=3)
        with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
            raise consequence
        assert (told.value.summary, told.value.exit_status()) == (f"rank 1 failed: BadImageError: {bad}", 2)
        assert not rank_errors.error_file(tmp_path, rank).exists()
    rank_errors.error_file(tmp_path, 1).unlink()
    _as_rank(monkeypatch, 0)
    with pytest.raises(BadImageError), rank_errors.told_to_rank_0(tmp_path):  # rank 0's own shard
        raise BadImageError(bad)
    _as_rank(monkeypatch, 1)
    with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
        raise RuntimeError("Connection closed by peer")
    assert (told.value.summary, told.value.exit_status()) == (f"rank 0 failed: BadImageError: {bad}", 2)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the failed rank keeps its traceback and exit 1: so do the others
    _as_rank(monkeypatch, 0)
    with pytest.raises(BadImageError), rank_errors.told_to_rank_0(tmp_path):
        raise BadImageError(bad)
    _as_rank(monkeypatch, 1)
    with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
        raise RuntimeError("Connection closed by peer")
    assert told.value.exit_status() == 1


def test_a_rank_stopped_alone_is_named_by_rank_0_but_a_ctrl_c_is_rank_0s_own_stop(tmp_path, monkeypatch):
    """Rank 1 stopped by SIGTERM leaves it like an error; rank 0, failing in the collective or
    stopped by torchrun's SIGTERM, raises OtherRankFailedError saying it (the one-line summary
    without rank 0's closed connection, exit 128 + 15). Stopped by SIGINT, rank 0 keeps its own
    stop (a Ctrl-C reaches every rank), and a rank's SIGINT note is not another rank's cause."""
    _as_rank(monkeypatch, 1)
    with pytest.raises(Stopped), rank_errors.told_to_rank_0(tmp_path):
        raise Stopped(signal.SIGTERM)
    assert json.loads(rank_errors.error_file(tmp_path, 1).read_text())["error"] == "stopped by SIGTERM"
    _as_rank(monkeypatch, 0)
    for consequence in (RuntimeError("Connection closed by peer"), Stopped(signal.SIGTERM)):
        with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
            raise consequence
        assert isinstance(told.value, EndedElsewhere)
        assert (told.value.summary, told.value.signum) == ("rank 1 was stopped by SIGTERM", signal.SIGTERM)
    with pytest.raises(Stopped), rank_errors.told_to_rank_0(tmp_path):
        raise Stopped(signal.SIGINT)
    _as_rank(monkeypatch, 1)
    for ctrl_c in (Stopped(signal.SIGINT), KeyboardInterrupt()):  # the tool's, Python's own
        rank_errors.error_file(tmp_path, 1).unlink(missing_ok=True)
        with pytest.raises(KeyboardInterrupt), rank_errors.told_to_rank_0(tmp_path):
            raise ctrl_c
        assert not rank_errors.error_file(tmp_path, 1).exists()  # nothing left: not another rank's cause


def test_a_training_whose_rank_1_was_stopped_alone_is_interrupted_in_its_status(tmp_path, monkeypatch):
    """Rank 1 stopped by SIGTERM outside the loop (while starting, no checkpoint): job_status.json
    says 'interrupted' with signal 15 and rank 1's stop, as for a SIGTERM to every rank; it said
    'failed' (an OtherRankFailedError is an error when another rank failed, not when it was stopped)."""
    from omegaconf import OmegaConf

    import panfpn.engine.train_run as train_run
    import panfpn.engine.training.job as job
    import panfpn.engine.training.start_checks as start_checks

    def rank_0_after_rank_1_stopped(cfg):
        raise rank_errors.OtherRankFailedError([(1, "stopped by SIGTERM", signal.SIGTERM)],
                                               RuntimeError("Connection closed by peer"))

    monkeypatch.setattr(train_run, "train_from_config", rank_0_after_rank_1_stopped)
    monkeypatch.setattr(start_checks, "check_job_start", lambda cfg: None)
    for name in ("RANK", "SLURM_PROCID", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cfg = OmegaConf.create({"output_dir": str(tmp_path), "solver": {"max_iter": 3}, "train": {"objective": None}})
    with pytest.raises(rank_errors.OtherRankFailedError):
        job.run_training_job(cfg)
    status = json.loads((tmp_path / "job_status.json").read_text())
    assert (status["status"], status["signal"]) == ("interrupted", signal.SIGTERM)
    assert status["error"].startswith("OtherRankFailedError: rank 1 was stopped by SIGTERM (then rank 0: ")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Randomly initialised weights of the default model (the stopping is tested, not the PQ) and
    a data cache of this module's own (a test corrupts an image there)."""
    root = tmp_path_factory.mktemp("evalranks")
    torch.manual_seed(0)
    from panfpn.modeling.build import build_model

    torch.save({"model": build_model(compose_config(output_dir=root / "w")).state_dict()}, root / "model.pth")
    return root / "model.pth", root / "cache"


def _launch(tmp_path: Path, setup, patch: str, *, signal_when_busy: tuple[int, bool] | None = None,
            save_predictions: bool = False, hold_rank_0: bool = False,
            ready: str = "") -> tuple[int, str, Path]:
    """torchrun with 2 ranks on tools/eval.py; with ``signal_when_busy`` ``(sig, whole_group)``,
    the signal goes to rank 1 alone or to the whole group once rank 1 is busy and ``ready`` is on
    stderr. Returns (exit status, stderr, run folder) after every process of the group is gone."""
    weights, cache = setup
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PANFPN_TEST_PATCH=patch,
               PANFPN_TEST_OUT=str(tmp_path), PANFPN_CACHE=str(cache), HOLD_RANK_0="1" if hold_rank_0 else "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [f"weights={weights}", *DATA, f"eval.save_predictions={str(save_predictions).lower()}",
            f"hydra.run.dir={run}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           sys.executable, "-c", RUNNER, str(ROOT / "tools" / "eval.py"), *args]
    busy = tmp_path / "busy"
    with log.open("w") as err_file, started(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file) as proc:
        if signal_when_busy is not None:
            sig, whole_group = signal_when_busy
            deadline = time.monotonic() + 120
            while not (busy.exists() and ready in log.read_text()):
                assert proc.poll() is None, f"ended before rank 1 was busy:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "rank 1 never got busy"
                time.sleep(0.02)
            if whole_group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(int(busy.read_text()), sig)
        stopped = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s later: processes {live_group(proc.pid)}")
        err = log.read_text()
        assert time.monotonic() - stopped < 30, err[-3000:]  # seconds, not gloo's 30-minute timeout
        deadline = time.monotonic() + 10
        while live_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group(proc.pid) == [], f"processes left behind: {live_group(proc.pid)}"
        _assert_ranks_gone(tmp_path)
    return proc.returncode, err, run


def _assert_ranks_gone(tmp_path: Path) -> None:
    """torchrun's ranks (each in a session of its own, outside the group) ended too."""
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in range(2)]
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, pids)), f"ranks left running: {[p for p in pids if alive(p)]}"


def _rank_exits(tmp_path: Path) -> list[str]:
    return [(tmp_path / f"rank{r}.exit").read_text() for r in range(2)]


def _one_line(err: str, tracebacks: int = 0) -> str:
    """The ranks' single line (tools/eval.py: ...); no closed connection (what rank 0 saw of rank
    1's end) and ``tracebacks`` tracebacks of the tool (a failing rank's own: its error)."""
    lines = [line for line in err.splitlines() if line.startswith("tools/eval.py:")]
    assert len(lines) == 1, err[-4000:]
    assert "Connection closed by peer" not in err, err[-4000:]
    assert err.count(f'{ROOT / "tools" / "eval.py"}", line') == tracebacks, err[-4000:]
    return lines[0]


def _earlier_results(run: Path) -> None:
    (run / "report_images").mkdir(parents=True)
    (run / "eval_results.json").write_text('{"earlier": "complete run"}')
    (run / "report.html").write_text("earlier report")


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


@pytest.mark.parametrize("rank_0", ["past_its_loop", "mid_loop"])
def test_rank_1_stopped_alone_is_said_by_rank_0_and_keeps_the_earlier_results(tmp_path, setup, rank_0):
    # Rank 0 learns of it from its failing gather (past its loop: its 3 images done) or from
    # torchrun's SIGTERM (held reading its last image). Before: rank 0 printed a 'Connection closed
    # by peer' traceback (hydra's 'Error executing job') or was killed by torchrun's SIGTERM; rank 1
    # alone said it was stopped.
    _earlier_results(tmp_path / "run")
    mid_loop = rank_0 == "mid_loop"
    status, err, run = _launch(tmp_path, setup, BLOCK_ON_RANK_1, signal_when_busy=(signal.SIGTERM, False),
                               hold_rank_0=mid_loop, ready="" if mid_loop else "eval: 3 batches")
    line = _one_line(err)
    assert line.startswith("tools/eval.py: rank 1 was stopped by SIGTERM; "), line
    assert "eval_results.json not written (the earlier one is unchanged)" in line
    assert status != 0 and _rank_exits(tmp_path) == ["143", "143"]
    assert (run / "eval_results.json").read_text() == '{"earlier": "complete run"}'
    assert (run / "report.html").read_text() == "earlier report"
    assert json.loads((run / "rank1_error.json").read_text())["error"] == "stopped by SIGTERM"
    assert _temp_files(run) == []


def test_a_bad_image_on_rank_1_is_said_by_rank_0_and_nothing_is_written_as_complete(tmp_path, setup):
    # Image 4 (rank 1's second) is truncated. Before: rank 0's only word was a 'Connection closed
    # by peer' traceback; the cause was on rank 1's stderr alone.
    weights, cache = setup
    val = synthetic_dataset("val", num_images=6, seed=1, height=64, width=64, cache_dir=str(cache),
                            is_train=False)  # what data.val builds in the job from this cache
    record = val.records[4]
    image = val.image_root / record.file_name
    good = image.read_bytes()
    image.write_bytes(good[:200])
    try:
        status, err, run = _launch(tmp_path, setup, "", save_predictions=True)
    finally:
        image.write_bytes(good)
    line = _one_line(err, tracebacks=0)  # rank 1's input error: no traceback, rank 0's line says it
    assert line.startswith(f"tools/eval.py: rank 1 failed: BadImageError: image id {record.image_id} of "), line
    assert image.name in line and "eval_results.json not written (no metrics)" in line
    # each rank's PNGs of the images done were removed (before: left beside no panoptic_pred.json)
    assert "predictions/ holds no prediction file (a stopped evaluation leaves no partial set)" in line
    # rank 1: an input error's exit 2 (panfpn/engine/tool_errors.py), silent off rank 0; rank 0 too,
    # ended by it (before: 1); torchrun's own: 1 (its report names rank 1, exitcode 2, as root cause)
    assert status == 1 and _rank_exits(tmp_path) == ["2", "2"]
    # as the processes ended (torchrun's report): rank 0 not killed by torchrun's SIGTERM on its way out
    assert dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", err)) == \
        {"0": "2", "1": "2"}, err[-3000:]
    assert not (run / "eval_results.json").exists() and not (run / "report.html").exists()
    assert not (run / "predictions" / "panoptic_pred.json").exists()
    assert [p for p in (run / "predictions").rglob("*") if p.is_file()] == []
    # nor where the ranks were filling the folders (each removes its own files on its way out)
    assert [p for p in (run / ".partial_predictions").rglob("*") if p.is_file()] == []
    assert _temp_files(run) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm_to_group"])
def test_a_stop_of_every_rank_ends_each_with_128_plus_the_signal_and_one_line(tmp_path, setup, sig):
    """Ctrl-C (SIGINT to torchrun's group, as a terminal sends it; torchrun passes it on) is rank 0's
    own stop; a SIGTERM to the group (``kill -- -PGID``) may be told as rank 1's when rank 1's note
    is there first."""
    # Before: each rank said its own line (two lines).
    status, err, run = _launch(tmp_path, setup, BLOCK_ON_RANK_1, signal_when_busy=(sig, True))
    line = _one_line(err)
    name = signal.Signals(sig).name
    if sig == signal.SIGINT:
        assert line.startswith("tools/eval.py: stopped by SIGINT before the metrics were complete"), line
    else:
        assert line.startswith((f"tools/eval.py: stopped by {name} before the metrics were complete",
                                f"tools/eval.py: rank 1 was stopped by {name}; before the metrics")), line
    assert status != 0 and _rank_exits(tmp_path) == [str(128 + sig)] * 2
    assert not (run / "eval_results.json").exists() and _temp_files(run) == []


# ----------------------------------------------------------------------------------------------
# the evaluation inside a training run (train.eval_period)

TRAIN = ["data.train.num_images=8", "data.train.height=64", "data.train.width=64",
         "data.train.transforms.transforms.0.short_edge_lengths=[64]",
         "data.train.transforms.transforms.0.max_size=128", "data.batch_size=1", "solver=synthetic_sgd",
         "solver.schedule.warmup_iters=0", "solver.schedule.steps=[]", "model.backbone.norm=gn",
         "train.log_period=1", "train.checkpoint_period=100", "train.progress_bar=false", "train.eval_period=1",
         "solver.max_iter=3", "eval.compute_ap=false", "weights=null"]
# In the evaluation: rank 1's read of image 3 (its first) and rank 0's of image 1 write a marker
# ('busy' with rank 1's pid, 'rank0_busy') and wait for the file 'release'; rank 0 lists the images
# it reads in 'rank0_reads'.
HOLD_BOTH = textwrap.dedent("""
    import time as _time
    from pathlib import Path as _Path
    from panfpn.data.dataset import PanopticDataset
    _get, _out = PanopticDataset.__getitem__, _Path(os.environ['PANFPN_TEST_OUT'])
    def _holding(self, index):
        if not self.is_train:
            rank = os.environ['RANK']
            if rank == '0':
                with open(_out / 'rank0_reads', 'a') as f:
                    f.write(f'{index}\\n')
            if (rank, index) in (('1', 3), ('0', 1)):
                marker = 'busy' if rank == '1' else 'rank0_busy'
                (_out / 'busy.part' / rank).parent.mkdir(exist_ok=True)
                (_out / 'busy.part' / rank).write_text(str(os.getpid()))
                (_out / 'busy.part' / rank).rename(_out / marker)
                while not (_out / 'release').exists():
                    _time.sleep(0.02)
        return _get(self, index)
    PanopticDataset.__getitem__ = _holding
""")


def test_rank_1_stopped_alone_in_a_training_evaluation_stops_every_rank_at_its_next_batch(tmp_path, setup):
    """SIGTERM to rank 1 alone while both ranks evaluate at iteration 1: rank 0 stops at its next
    batch too (it read 2 of its 3 images), the evaluation's partial metrics are not logged, the
    checkpoint of iteration 1 is written and job_status.json says 'interrupted' by signal 15.
    Before, rank 0 went on through its whole shard (minutes on a real validation set, gloo's
    30-minute timeout for rank 1 waiting in the gather) before it learnt of the stop."""
    _, cache = setup
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PANFPN_TEST_PATCH=HOLD_BOTH,
               PANFPN_TEST_OUT=str(tmp_path), PANFPN_CACHE=str(cache))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           sys.executable, "-c", RUNNER, str(ROOT / "tools" / "train.py"), *TRAIN, *DATA, f"hydra.run.dir={run}"]
    with log.open("w") as err_file, started(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file) as proc:
        deadline = time.monotonic() + 120
        while not ((tmp_path / "busy").exists() and (tmp_path / "rank0_busy").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.kill(int((tmp_path / "busy").read_text()), signal.SIGTERM)
        while "received signal 15" not in log.read_text():  # rank 1's handler ran
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        (tmp_path / "release").write_text("")
        proc.wait(timeout=60)
        assert live_group(proc.pid) in ([], [proc.pid])
        _assert_ranks_gone(tmp_path)
    err = log.read_text()
    assert proc.returncode != 0 and _rank_exits(tmp_path) == ["143", "143"], err[-3000:]
    assert (tmp_path / "rank0_reads").read_text().split() == ["0", "1"]  # not its third image, 2
    status = json.loads((run / "job_status.json").read_text())
    assert (status["status"], status["signal"], status["iteration"]) == ("interrupted", 15, 1), status
    assert Path(status["checkpoint"]).name == "model_0000001.pth" and Path(status["checkpoint"]).is_file()
    assert "evaluation at iteration 1 interrupted by signal 15" in err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == []
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [".hydra"]
