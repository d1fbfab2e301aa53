"""tools/eval.py, predict.py, export.py and merge.py stopped by SIGTERM (to the main process, to the
whole process group as Slurm's scancel does) or SIGINT (Ctrl-C: the group) while busy: one stderr
line saying what was stopped and written, exit 128 + signal, no traceback, no process left behind,
no temp file, every output complete or absent (an earlier result unchanged).

Each tool runs in its own process group (process_helpers) with one function patched to block at a
known point (a DataLoader or pool worker reading an input, an atomic write with its temp file on
disk) after writing a marker file: the test signals once the marker is there, never after a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config_helpers import compose_config
from merge_helpers import write_tiny_merge_inputs
from process_helpers import live_group, started

ROOT = Path(__file__).resolve().parents[2]
WHOLE_GROUP, MAIN_ONLY = True, False

# Runs sys.argv[1] as __main__ (a tool) after the patch code in $PANFPN_TEST_PATCH.
RUNNER = ("import os, runpy, sys; exec(os.environ['PANFPN_TEST_PATCH']); sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")

# block(marker): write the marker file, then sleep until killed (a stop signal interrupts the sleep).
BLOCK = textwrap.dedent("""
    import time as _time
    from pathlib import Path as _Path
    def block(marker):
        _Path(marker).write_text(str(os.getpid()))
        while True:
            _time.sleep(0.05)
""")


def _run_and_stop(tool: str, args: list[str], patch: str, ready, sig: int, whole_group: bool,
                  timeout: float = 120, exit_within: float = 60) -> tuple[int, str]:
    """Start ``tools/<tool>.py args`` with ``patch``, wait until ``ready()`` is true, send ``sig``;
    returns (exit status, stderr) once it exited (within ``exit_within`` seconds, else the test
    fails) and its whole group is gone."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PANFPN_TEST_PATCH=BLOCK + patch)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", RUNNER, str(ROOT / "tools" / f"{tool}.py"), *args]
    with started(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{tool} ended before it was busy:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{tool} never got busy"
            time.sleep(0.02)
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=exit_within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{tool} hung after {signal.Signals(sig).name}: processes {live_group(proc.pid)} left")
        deadline = time.monotonic() + 10  # pool / DataLoader workers exit after their parent
        while live_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group(proc.pid) == [], f"processes left behind: {live_group(proc.pid)}"
    return proc.returncode, err


def _assert_stopped(status: int, err: str, tool: str, sig: int) -> str:
    """Exit 128 + signal and one line on stderr (after the log lines), no traceback; returns it."""
    assert status == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"tools/{tool}.py: stopped by")]
    assert len(lines) == 1, err[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in lines[0]
    return lines[0]


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Randomly initialised weights of the default (small) model: the I/O is what is tested."""
    torch.manual_seed(0)
    from panfpn.modeling.build import build_model

    model = build_model(compose_config(output_dir=tmp_path_factory.mktemp("w")))
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / f"p{k}.png")


def _listed(json_path: Path) -> int:
    return len(json.loads(json_path.read_text())["images"]) if json_path.exists() else -1


# ----------------------------------------------------------------------------------------------
# tools/predict.py


def _blocking_from_third_item(module: str, dataset: str, busy: Path) -> str:
    """Code that makes ``dataset.__getitem__`` from the third item on wait in ``block(busy)`` (the
    tool is then busy reading: the moment to send the signal)."""
    return textwrap.dedent(f"""
        from {module} import {dataset}
        _get = {dataset}.__getitem__
        def _blocking(self, index):
            if index >= 2:
                block({str(busy)!r})
            return _get(self, index)
        {dataset}.__getitem__ = _blocking
    """)


@pytest.mark.parametrize("sig,whole_group", [
    pytest.param(signal.SIGTERM, MAIN_ONLY, id="sigterm", marks=pytest.mark.slow),  # ~10 s each: torch starts
    pytest.param(signal.SIGTERM, WHOLE_GROUP, id="sigterm_to_group"),
    pytest.param(signal.SIGINT, WHOLE_GROUP, id="ctrl_c", marks=pytest.mark.slow),
])
def test_predict_stopped_while_its_dataloader_worker_reads(weights, tmp_path, sig, whole_group):
    # Before: SIGTERM killed it silently (143 from the shell, no panoptic.json although 2 images were
    # written); a group SIGTERM also killed the DataLoader worker ("DataLoader worker ... killed by
    # signal" at exit); Ctrl-C printed a KeyboardInterrupt traceback.
    inp, out, busy = tmp_path / "in", tmp_path / "out", tmp_path / "busy"
    _photos(inp, 5)
    patch = _blocking_from_third_item("panfpn.data.image_files", "ImageFileDataset", busy)
    args = [f"weights={weights}", f"predict.input={inp}", f"predict.output_dir={out}", "predict.batch_size=1",
            "predict.num_workers=1", "predict.write_threads=0", "predict.json_every=1", "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}"]
    status, err = _run_and_stop("predict", args, patch,
                                lambda: busy.exists() and _listed(out / "panoptic.json") == 2, sig, whole_group)
    line = _assert_stopped(status, err, "predict", sig)
    assert "after 2 of 5 images" in line and "a rerun predicts the other 3" in line
    data = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["p0.png", "p1.png"]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == ["p0.png", "p1.png"]
    assert _temp_files(out) == []


def test_predict_onnx_backend_stopped_while_reading_an_image(tmp_path):
    # predict.backend=onnxruntime reads and runs one image at a time in the main process; the
    # session is a stand-in here (an empty id map per image): the files and the stop are tested.
    # Before: killed silently by SIGTERM, no panoptic.json although 2 PNGs were written.
    inp, out, busy = tmp_path / "in", tmp_path / "out", tmp_path / "busy"
    _photos(inp, 5)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"stand-in")
    patch = textwrap.dedent(f"""
        import numpy as _np
        from panfpn.deploy import onnx_runner as _runner
        import panfpn.engine.predict_onnx as _backend
        _runner.open_session = lambda path, **kw: object()
        _runner.model_metadata = lambda session: {{"categories": [{{"id": 1, "name": "a", "isthing": 1}}]}}
        _runner.run_image = lambda session, image: {{"panoptic": _np.zeros(image.shape[:2], _np.int32),
                                                    "num_segments": 0}}
        _read, _calls = _backend.read_like_torch_backend, []
        def _blocking(path):
            _calls.append(path)
            if len(_calls) == 3:
                block({str(busy)!r})
            return _read(path)
        _backend.read_like_torch_backend = _blocking
    """)
    args = [f"weights={model}", "predict.backend=onnxruntime", "predict.overlay=false", f"predict.input={inp}",
            f"predict.output_dir={out}", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    status, err = _run_and_stop("predict", args, patch, busy.exists, signal.SIGTERM, MAIN_ONLY)
    line = _assert_stopped(status, err, "predict", signal.SIGTERM)
    assert "after 2 of 5 images" in line
    assert [a["file_name"] for a in json.loads((out / "panoptic.json").read_text())["annotations"]] == \
        ["p0.png", "p1.png"]
    assert _temp_files(out) == []


# ----------------------------------------------------------------------------------------------
# tools/eval.py


@pytest.mark.parametrize("sig,whole_group", [
    pytest.param(signal.SIGTERM, WHOLE_GROUP, id="sigterm_to_group"),
    pytest.param(signal.SIGINT, WHOLE_GROUP, id="ctrl_c", marks=pytest.mark.slow),
])
def test_eval_stopped_while_its_dataloader_worker_reads_keeps_the_earlier_results(weights, tmp_path, sig,
                                                                                 whole_group):
    # Before: exit by the signal without a word (SIGTERM), a traceback (Ctrl-C).
    run, busy = tmp_path / "run", tmp_path / "busy"
    (run / "report_images").mkdir(parents=True)
    (run / "eval_results.json").write_text('{"earlier": "complete run"}')
    (run / "report.html").write_text("earlier report")
    patch = _blocking_from_third_item("panfpn.data.dataset", "PanopticDataset", busy)
    args = [f"weights={weights}", "data.val.num_images=5", "data.val.height=64", "data.val.width=64",
            "eval.max_images=null", "data.num_workers=1", "device=cpu", f"hydra.run.dir={run}"]
    status, err = _run_and_stop("eval", args, patch,  # the first 2 images scored, the worker reading the 3rd
                                lambda: busy.exists() and len(list((run / "report_images").glob("*.jpg"))) == 2,
                                sig, whole_group)
    line = _assert_stopped(status, err, "eval", sig)
    assert "eval_results.json not written (the earlier one is unchanged)" in line
    # the images done so far replaced their overlays: the earlier page no longer shows its own run
    assert "the earlier report.html no longer match the images this run rewrote" in line
    assert (run / "eval_results.json").read_text() == '{"earlier": "complete run"}'
    assert (run / "report.html").read_text() == "earlier report" and _temp_files(run) == []


def test_eval_stopped_part_way_leaves_no_partial_prediction_set(weights, tmp_path):
    # Before: predictions/panoptic_pred/ and semantic/ kept the PNGs of the images done before the
    # stop, which the official scripts (globbing those folders) scored as the whole set.
    run, busy = tmp_path / "run", tmp_path / "busy"
    pngs = run / "predictions" / "panoptic_pred"
    patch = _blocking_from_third_item("panfpn.data.dataset", "PanopticDataset", busy)
    args = [f"weights={weights}", "data.val.num_images=5", "data.val.height=64", "data.val.width=64",
            "eval.max_images=null", "data.num_workers=1", "device=cpu", "eval.save_predictions=true",
            "eval.save_semantic=true", "eval.report=false", "eval.compute_ap=false", f"hydra.run.dir={run}"]
    status, err = _run_and_stop("eval", args, patch,  # the PNGs are filled in a hidden folder, then moved
                                lambda: busy.exists() and len(list(run.rglob("panoptic_pred/*.png"))) == 2,
                                signal.SIGTERM, WHOLE_GROUP)
    line = _assert_stopped(status, err, "eval", signal.SIGTERM)
    assert "predictions/ holds no prediction file (a stopped evaluation leaves no partial set)" in line
    assert [p for folder in ("predictions", "semantic") for p in (run / folder).rglob("*") if p.is_file()] == []
    assert f"removed the 2 prediction file(s) this evaluation had written for {pngs} (in " in err
    assert "it was stopped before every image was scored" in err
    assert _temp_files(run) == [] and not (run / ".partial_predictions").exists()


# Blocks once the tool's job has returned (its `with STOP:` over), where hydra's end and Python's
# exit follow.
AFTER_THE_JOB = textwrap.dedent("""
    import panfpn.engine.tool_errors as _tool_errors
    _exit = _tool_errors.InputErrorsExit.__exit__
    def _after_the_job(self, kind, err, tb):
        if kind is None:
            block(os.environ['PANFPN_TEST_BUSY'])
        return _exit(self, kind, err, tb)
    _tool_errors.InputErrorsExit.__exit__ = _after_the_job
""")


@pytest.mark.parametrize("tool", ["eval", pytest.param("predict", marks=pytest.mark.slow)])
def test_a_signal_after_the_job_has_written_everything_says_so(weights, tmp_path, monkeypatch, tool):
    # Before: the handler was gone once the job returned, and SIGTERM killed the process silently
    # (143 from the shell): a log could not tell whether the outputs were complete.
    run, busy, inp = tmp_path / "run", tmp_path / "busy", tmp_path / "in"
    monkeypatch.setenv("PANFPN_TEST_BUSY", str(busy))
    args = [f"weights={weights}", "device=cpu", f"hydra.run.dir={run}"]
    if tool == "eval":
        args += ["data.val.num_images=2", "data.val.height=64", "data.val.width=64", "eval.max_images=null",
                 "data.num_workers=0"]
    else:
        _photos(inp, 2)
        args += [f"predict.input={inp}", f"predict.output_dir={run / 'out'}", "predict.write_threads=0"]
    status, err = _run_and_stop(tool, args, AFTER_THE_JOB, busy.exists, signal.SIGTERM, MAIN_ONLY)
    line = _assert_stopped(status, err, tool, signal.SIGTERM)
    assert line.startswith(f"tools/{tool}.py: stopped by SIGTERM after the job had finished: every output was "
                           "written ("), line
    if tool == "eval":
        assert line.endswith(f"(after writing eval_results.json, report.html in {run})"), line
        assert json.loads((run / "eval_results.json").read_text())["panoptic"]
    else:
        assert f"after 2 of 2 images: panoptic.json lists the 2 whose files are complete in {run / 'out'})" in line
        assert _listed(run / "out" / "panoptic.json") == 2


def test_eval_stopped_while_fetching_a_batch_from_its_dataloader_worker(weights, tmp_path):
    # A DataLoader worker hands each tensor of a batch over as a file descriptor: the main process
    # connects to the worker's multiprocessing resource_sharer thread, authenticates, asks for it.
    # A stop signal in that handshake (here the main process blocks in it) breaks the connection
    # off, and the worker's thread printed an EOFError traceback from resource_sharer.py after the
    # "stopped by" line (seen once in 9 `timeout -s TERM` runs of a docs audit).
    run, busy = tmp_path / "run", tmp_path / "busy"
    patch = textwrap.dedent(f"""
        import multiprocessing.connection as _mpc
        _main, _answer = os.getpid(), _mpc.answer_challenge
        def _blocking_answer(connection, authkey):
            if os.getpid() == _main:  # the main process fetching a tensor from the worker
                block({str(busy)!r})
            return _answer(connection, authkey)
        _mpc.answer_challenge = _blocking_answer
    """)
    args = [f"weights={weights}", "data.val.num_images=3", "data.val.height=64", "data.val.width=64",
            "eval.max_images=null", "data.num_workers=1", "device=cpu", f"hydra.run.dir={run}"]
    status, err = _run_and_stop("eval", args, patch, busy.exists, signal.SIGTERM, MAIN_ONLY)
    line = _assert_stopped(status, err, "eval", signal.SIGTERM)
    assert "eval_results.json not written (no metrics)" in line


def _signal_after_the_workers_fork(busy: Path) -> str:
    """Patch: the main process waits in an at-fork callback (after a DataLoader worker's fork) until
    the tool's handler has run once, after writing ``busy`` (the test sends the signal then)."""
    return textwrap.dedent(f"""
        import panfpn.utils.stop_signals as _stop
        _handle, _got = _stop.StopSignals._handle, []
        def _counting(self, signum, frame):
            _got.append(signum)
            return _handle(self, signum, frame)
        _stop.StopSignals._handle = _counting
        _main = os.getpid()
        def _after_in_parent():
            if os.getpid() == _main and _stop._ACTIVE is not None and not _got:
                _Path({str(busy)!r}).write_text("1")
                while not _got:
                    _time.sleep(0.01)
        os.register_at_fork(after_in_parent=_after_in_parent)
    """)


def _eval_one_worker(weights: Path, run: Path) -> list[str]:
    """tools/eval.py on 3 tiny images with one DataLoader worker."""
    return [f"weights={weights}", "data.val.num_images=3", "data.val.height=64", "data.val.width=64",
            "eval.max_images=null", "data.num_workers=1", "device=cpu", f"hydra.run.dir={run}"]


def test_eval_stopped_while_forking_its_dataloader_worker(weights, tmp_path):
    # A signal during fork() runs its handler in the first Python code after it: an at-fork
    # callback (logging's _releaseLock; here one like it that waits for the signal). An exception
    # there is printed as "Exception ignored in ..." and dropped, so eval went on to the end (seen
    # in 2 of 21 group-SIGTERM runs of tools/eval.py, the signal as the workers started).
    run, busy = tmp_path / "run", tmp_path / "busy"
    patch = _signal_after_the_workers_fork(busy)
    status, err = _run_and_stop("eval", _eval_one_worker(weights, run), patch, busy.exists, signal.SIGTERM, MAIN_ONLY)
    line = _assert_stopped(status, err, "eval", signal.SIGTERM)
    assert "eval_results.json not written (no metrics)" in line


def test_eval_stopped_as_its_dataloader_takes_a_queue_lock_after_the_fork(weights, tmp_path):
    # The signal deferred during the worker's fork comes again as the DataLoader puts the first
    # indices in the worker's queue: here inside threading.Condition.__enter__, its lock taken
    # (a wrapper that waits there for the signal widens that window of microseconds). Raised
    # there, the stop left the lock held: eval said its stop line, then the iterator's __del__
    # waited forever for that lock to put its end marker (3 of 30 runs of the test above under load).
    run, busy = tmp_path / "run", tmp_path / "busy"
    patch = _signal_after_the_workers_fork(busy) + textwrap.dedent("""
        import sys as _sys, threading as _threading
        import multiprocessing.queues as _queues
        _enter, _put = _threading.Condition.__enter__, _queues.Queue.put.__code__
        def __enter__(self):
            held = _enter(self)  # the lock is taken: the signal sent again after the fork comes now
            if (_got and os.getpid() == _main and not _stop.forking()
                    and _sys._getframe(1).f_code is _put and len(_got) == 1):
                while len(_got) == 1:
                    _time.sleep(0.001)
            return held
        _threading.Condition.__enter__ = __enter__
    """)
    status, err = _run_and_stop("eval", _eval_one_worker(weights, run), patch, busy.exists, signal.SIGTERM,
                                MAIN_ONLY, exit_within=20)
    line = _assert_stopped(status, err, "eval", signal.SIGTERM)
    assert "eval_results.json not written (no metrics)" in line


# ----------------------------------------------------------------------------------------------
# tools/merge.py (CPU: a fork pool of workers that read, merge and write)


def _merge_inputs(root: Path, n: int) -> list[str]:
    return [*write_tiny_merge_inputs(root, range(n)), "merge.workers=2", "device=cpu", "merge.stuff_area=0",
            "merge.thing_min_remaining_area=1", f"merge.output_dir={root / 'out'}"]


@pytest.mark.parametrize("sig,whole_group", [(signal.SIGTERM, MAIN_ONLY), (signal.SIGTERM, WHOLE_GROUP),
                                             (signal.SIGINT, WHOLE_GROUP)],
                         ids=["sigterm", "sigterm_to_group", "ctrl_c"])
def test_merge_stopped_while_a_pool_worker_writes_a_png(tmp_path, sig, whole_group):
    # Image 3's PNG write blocks in its worker with the temp file on disk. Before: the signal
    # killed the main process silently (or with a KeyboardInterrupt traceback), the workers printed
    # BrokenPipeError tracebacks, and the temp file stayed; a group SIGTERM could hang the main
    # process in Pool.terminate().
    args = _merge_inputs(tmp_path, 12)
    out, busy = tmp_path / "out", tmp_path / "busy"
    patch = textwrap.dedent(f"""
        import panfpn.utils.atomic as _atomic
        _write = _atomic.atomic_write
        def _blocking(path, write, **kw):
            if _Path(path).name == "000000000003.png":
                def write_then_block(f):
                    write(f)
                    f.flush()
                    block({str(busy)!r})
                return _write(path, write_then_block, **kw)
            return _write(path, write, **kw)
        _atomic.atomic_write = _blocking
    """)
    status, err = _run_and_stop("merge", args, patch, busy.exists, sig, whole_group)
    line = _assert_stopped(status, err, "merge", sig)
    assert "panoptic_merged.json not written" in line and "merge.overwrite=true" in line
    assert not (out / "panoptic_merged.json").exists()
    assert _temp_files(out) == []
    assert "000000000003.png" not in {p.name for p in (out / "panoptic_merged").iterdir()}


def test_merge_pool_worker_that_missed_its_parents_sigterm_does_not_hang_the_stop(tmp_path):
    # Two SIGTERMs pending at once merge into one, with the first sender's pid: a group SIGTERM still
    # pending in a pool worker when its parent's Pool.terminate() signals it makes the worker take
    # it for a foreign one, ignore it, and the parent wait in Pool.terminate() forever (seen once in
    # ~20 group SIGTERMs on a loaded machine). Here the workers take their signals late, so the two
    # always merge: terminate_pool kills the worker after its timeout instead.
    args = _merge_inputs(tmp_path, 12)
    busy = tmp_path / "busy"
    patch = textwrap.dedent(f"""
        import panfpn.utils.stop_signals as _stop
        _take = _stop._exit_on_parents_sigterm
        def _late(parent):
            _time.sleep(3)
            _take(parent)
        _stop._exit_on_parents_sigterm = _late
        from panfpn.data.merge_inputs import MergeInputs
        _read = MergeInputs.read
        def _blocking(self, k):
            if k == 3:
                block({str(busy)!r})
            return _read(self, k)
        MergeInputs.read = _blocking
    """)
    status, err = _run_and_stop("merge", args, patch, busy.exists, signal.SIGTERM, WHOLE_GROUP)
    _assert_stopped(status, err, "merge", signal.SIGTERM)


# ----------------------------------------------------------------------------------------------
# tools/export.py


def test_export_stopped_while_writing_the_onnx_file_keeps_the_earlier_export(weights, tmp_path):
    # The ONNX writer is replaced by one that writes a few bytes into the temp file and blocks (a
    # real export takes half a minute). Before: exit by the signal, the temp file left beside.
    stem, busy = tmp_path / "x" / "model", tmp_path / "busy"
    stem.parent.mkdir()
    for ext in (".onnx", ".json"):
        stem.with_name("model" + ext).write_text("earlier export")
    patch = textwrap.dedent(f"""
        import torch.onnx
        def _blocking_export(model, args, f, **kw):
            _Path(f).write_bytes(b"partial onnx")
            block({str(busy)!r})
        torch.onnx.export = _blocking_export
    """)
    args = [f"weights={weights}", f"export.output={stem}", "export.format=onnx", "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}"]
    status, err = _run_and_stop("export", args, patch, busy.exists, signal.SIGTERM, MAIN_ONLY)
    line = _assert_stopped(status, err, "export", signal.SIGTERM)
    assert "before writing any file: model.onnx, model.json not written" in line
    assert "from an earlier export, unchanged" in line
    assert [p.read_text() for p in (stem.with_name("model.onnx"), stem.with_name("model.json"))] == \
        ["earlier export"] * 2
    assert _temp_files(tmp_path / "x") == []


# ----------------------------------------------------------------------------------------------
# panfpn.utils.stop_signals itself (no torch: fast)

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from panfpn.utils.stop_signals import describe_outputs, stop_signals
    STOP = stop_signals("tools/x.py")
    marker, stage = Path(sys.argv[1]), sys.argv[2]
    if stage == "starting":
        marker.write_text("1")
        time.sleep(60)
    with STOP:
        describe_outputs(lambda: f"after {2 if stage == 'finished' else 1} of 2 items")
        if stage == "running":
            try:
                marker.write_text("1")
                time.sleep(60)
            finally:  # the cleanup (e.g. writing what is done), which a second signal cuts short
                Path(str(marker) + ".cleaning").write_text("1")
                time.sleep(60)
    marker.write_text("1")  # finished: the tool's end (hydra's, Python's exit) would run now
    time.sleep(60)
""")


@pytest.mark.parametrize("stage,signals,status,message", [
    ("starting", [signal.SIGTERM], 143, "tools/x.py: stopped by SIGTERM while starting; nothing written"),
    ("running", [signal.SIGINT, signal.SIGINT], -signal.SIGINT,
     "tools/x.py: SIGINT again: aborted at once"),
    # Before: killed silently by the default action once the job had returned (SIGINT: a
    # KeyboardInterrupt traceback).
    ("finished", [signal.SIGTERM], 143, "tools/x.py: stopped by SIGTERM after the job had finished: every "
     "output was written (after 2 of 2 items)\n"),
    ("finished", [signal.SIGINT], 130, "tools/x.py: stopped by SIGINT after the job had finished: every "
     "output was written (after 2 of 2 items)\n"),
], ids=["while_starting", "second_signal_aborts", "sigterm_after_the_job", "sigint_after_the_job"])
def test_stop_signal_before_the_job_and_a_second_one(tmp_path, stage, signals, status, message):
    marker = tmp_path / "busy"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with started([sys.executable, "-c", SCRIPT, str(marker), stage], env=env, stderr=subprocess.PIPE,
                 text=True) as proc:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signals[0])
        cleaning = Path(str(marker) + ".cleaning")
        if stage == "running":
            while not cleaning.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.01)
        for sig in signals[1:]:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == status and message in err and "Traceback" not in err, err
