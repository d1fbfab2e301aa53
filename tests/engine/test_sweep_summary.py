"""Sweep summaries: one row per job from its own files; a real 2x2 multirun, an interrupted sweep,
an Optuna sweep through tools/train.py's objective."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from panfpn.engine.sweep.summary import METRICS, write_summary

ROOT = Path(__file__).resolve().parents[2]


def _eval_results(pq: float) -> dict:
    split = {"pq": pq, "sq": pq + 0.1, "rq": pq + 0.2, "n": 3}
    return {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
            "sem_seg": {"mIoU": 0.5}, "bbox": {"AP": 0.25}, "segm": {"AP": -1.0}}


def _fake_run(path: Path, status: str | None, pq: float | None, overrides: list[str]) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        (path / "job_status.json").write_text(json.dumps({
            "status": status, "wall_s": 12.5, "iteration": 4, "error": "boom" if status == "failed" else None,
            "objective": {"name": "pq/All", "direction": "maximize", "value": None if pq is None else 100 * pq}}))
    if pq is not None:
        (path / "eval_results.json").write_text(json.dumps(_eval_results(pq)))
    return path


def test_summary_rows_come_from_each_jobs_files(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", "done", 0.3, ["solver.base_lr=0.01"])
    _fake_run(sweep / "1", "failed", None, ["solver.base_lr=10"])
    _fake_run(sweep / "2", None, None, ["solver.base_lr=0.02"])  # killed: no job_status.json
    _fake_run(sweep / "10", "done", 0.4, ["solver.base_lr=0.03"])
    rows = write_summary([sweep], sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert [r["status"] for r in rows] == ["done", "failed", "unknown", "done"]
    assert rows[0]["PQ"] == pytest.approx(30.0) and rows[0]["SQ_th"] == pytest.approx(40.0)
    assert rows[0]["mIoU"] == pytest.approx(50.0) and rows[0]["AP_box"] == pytest.approx(25.0)
    assert rows[0]["AP_mask"] is None  # COCOeval's -1: not a number to compare
    assert rows[1]["PQ"] is None and rows[1]["error"] == "boom" and rows[0]["overrides"] == ["solver.base_lr=0.01"]
    saved = json.loads((sweep / "summary.json").read_text())
    assert saved["best"] == "10" and saved["jobs"] == rows
    with open(sweep / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["done", "failed", "unknown", "done"] and table[1]["PQ"] == ""
    page = (sweep / "summary.html").read_text()
    assert page.count("<tr class=") == 4 and 'class="done best"' in page and "th class=\"sortable\"" in page


def test_summarize_tool_collects_folders_made_separately(tmp_path):
    a = _fake_run(tmp_path / "slurm_a" / "run", "done", 0.3, ["seed=1"])
    b = _fake_run(tmp_path / "machine_b", "interrupted", None, ["seed=2"])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/summarize.py"), str(a.parent), str(b), "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "interrupted" in proc.stdout and "30.00" in proc.stdout
    rows = json.loads((out / "summary.json").read_text())["jobs"]
    assert [(r["run_dir"], r["status"]) for r in rows] == [(str(a), "done"), (str(b), "interrupted")]


def test_summarize_tool_imports_no_torch(tmp_path):
    # A summary is JSON, CSV and HTML: tools/summarize.py starts without torch's second or two.
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", "done", 0.3, ["seed=1"])
    _fake_run(sweep / "1", "failed", None, ["seed=2"])
    run = ("import runpy, sys; sys.argv = ['tools/summarize.py'] + sys.argv[1:]\n"
           "try:\n"
           f"    runpy.run_path({str(ROOT / 'tools' / 'summarize.py')!r}, run_name='__main__')\n"
           "except SystemExit as exit:\n"
           "    assert exit.code in (0, None), exit.code\n"
           "print('TORCH_IMPORTED', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", run, str(sweep)], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "summary.html").is_file() and "TORCH_IMPORTED False" in proc.stdout


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _pct(results: dict, path: tuple) -> float | None:
    for key in path:
        results = results[key]
    return None if results < 0 else 100 * results


SWEEP_TINY = ["solver.max_iter=2", "solver.schedule.steps=[1]", "solver.schedule.warmup_iters=1",
              "data.val.num_images=2", "eval.max_images=2", "train.num_vis_images=0", "train.checkpoint_period=100"]


@pytest.mark.slow
def test_two_by_two_multirun_ends_with_a_summary_of_four_jobs(tmp_path, tiny_args):
    sweep = tmp_path / "sweep"
    args = [*tiny_args, *SWEEP_TINY, "solver.base_lr=0.01,0.02", "model.merge.score_thresh=0.3,0.6",
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "-m", *args], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep summary (4 jobs)" in proc.stdout
    summary = json.loads((sweep / "summary.json").read_text())
    rows = summary["jobs"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {r["params"] for r in rows} == {f"solver.base_lr={lr} model.merge.score_thresh={t}"
                                              for lr in ("0.01", "0.02") for t in ("0.3", "0.6")}
    for row in rows:
        results = json.loads((Path(row["run_dir"]) / "eval_results.json").read_text())
        for name, path in METRICS:
            assert row[name] == pytest.approx(_pct(results, path)), (row["job"], name)
        assert row["objective"] == pytest.approx(row["PQ"])  # train.objective=pq/All
    assert summary["objective"]["name"] == "pq/All"
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.html").read_text().count("<tr class=") == 4


@pytest.mark.slow
def test_an_interrupted_job_is_in_the_summary_and_stops_the_sweep(tmp_path, tiny_args):
    sweep = tmp_path / "sweep"
    args = [*tiny_args, "solver.max_iter=100000", "solver.schedule.steps=[50000]", "train.eval_period=-1",
            "train.checkpoint_period=100000", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), "-m", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        metrics = sweep / "0" / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None and not (metrics.is_file() and metrics.read_text()):
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted")]  # job 1 never started
    assert not (sweep / "1").exists()
    assert "sweep stopped: job 0 was interrupted" in out


@pytest.mark.slow
def test_optuna_sweeper_optimises_the_returned_objective(tmp_path, tiny_args):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed "
                        "(pip install 'panfpn[sweep]')")
    sweep = tmp_path / "optuna"
    args = [*tiny_args, *SWEEP_TINY, "eval.compute_ap=false", "train.objective=sem_seg/mIoU", "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.direction=maximize",
            "hydra.sweeper.sampler.seed=0", "solver.base_lr=interval(0.005,0.02)",
            "model.merge.score_thresh=choice(0.3,0.6)", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "-m", *args], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summary = json.loads((sweep / "summary.json").read_text())
    rows = summary["jobs"]
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    # Optuna saw the values tools/train.py returned: the jobs' mIoU, as their eval_results.json hold it
    for row in rows:
        results = json.loads((Path(row["run_dir"]) / "eval_results.json").read_text())
        assert row["objective"] == pytest.approx(100 * results["sem_seg"]["mIoU"]) == pytest.approx(row["mIoU"])
    winner = next(r for r in rows if r["job"] == summary["best"])
    assert best["best_value"] == pytest.approx(winner["objective"])
    assert f"solver.base_lr={best['best_params']['solver.base_lr']}" in winner["params"]


@pytest.mark.slow
def test_failed_jobs_are_in_the_summary_with_their_errors(tmp_path, tiny_args):
    """Two jobs that fail once running (weights of the job's own model, all NaN: files the checks
    before the sweep load and accept, tests/engine/test_sweep_dry_start.py; the first step's loss
    is not finite): hydra runs both, then reports the failure; the summary, refreshed after each
    job, lists both as failed with the error."""
    import torch
    from config_helpers import compose_config

    from panfpn.modeling.build import instantiate_model

    sweep = tmp_path / "sweep"
    state = instantiate_model(compose_config(tiny_args, output_dir=tmp_path / "model")).state_dict()
    nan = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    poisoned = [tmp_path / "a.pth", tmp_path / "b.pth"]
    for path in poisoned:
        torch.save({"model": nan}, path)
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "-m", *tiny_args,
                           f"weights={poisoned[0]},{poisoned[1]}", f"hydra.sweep.dir={sweep}"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "failed")]
    assert all("NonFiniteLossError: non-finite loss at iteration" in row["error"] for row in rows), rows
    assert rows[0]["params"] == f"weights={poisoned[0]}"


def test_a_sweep_with_a_failed_job_still_ends_with_its_table(tmp_path, tiny_args):
    """hydra's basic sweeper raises a failed job's error after the last job and never calls the
    callbacks' on_multirun_end: the printed table, the one place a sweep's outcome is seen at a
    glance, was missing exactly when a job failed (the summary files were there)."""
    import torch
    from config_helpers import compose_config

    from panfpn.modeling.build import instantiate_model

    state = instantiate_model(compose_config(tiny_args, output_dir=tmp_path / "model")).state_dict()
    poisoned = tmp_path / "nan.pth"  # loads (the checks before the sweep accept it); the first loss is NaN
    torch.save({"model": {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in state.items()}}, poisoned)
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "-m", *tiny_args,
                           "train.eval_period=-1", f"weights={poisoned}", f"hydra.sweep.dir={sweep}"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NonFiniteLossError" in proc.stderr  # hydra's report of the failure, as before
    table = proc.stdout[proc.stdout.index(f"sweep summary (1 job): {sweep}/summary.html"):]
    assert table.splitlines()[2].split()[:2] == ["0", "failed"], table
    assert "notes:\n  job 0 (failed): NonFiniteLossError: non-finite loss at iteration 1:" in table  # why
    assert proc.stdout.count("sweep summary (") == 1


def _table_rows(text: str, start: str) -> dict[str, str]:
    """job -> its line of the table printed after ``start``."""
    lines = text[text.index(start):].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job  status"))
    return {line.split()[0]: line for line in lines[header + 1:] if line[:1].isdigit()}


def _two_job_sweep(sweep: Path, tiny_args: list[str], *more: str) -> subprocess.CompletedProcess:
    """tools/train.py -m: two tiny jobs (solver.base_lr=0.01,0.02) into ``sweep``, no evaluation; asserts
    that it succeeded."""
    args = [*tiny_args, *SWEEP_TINY, "train.eval_period=-1", "train.objective=null", "solver.base_lr=0.01,0.02",
            *more, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "-m", *args], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_sweep_with_another_hydra_output_subdir_shows_its_params(tmp_path, tiny_args, monkeypatch):
    """``hydra.output_subdir=.cfg``: hydra's record of each job is ``<job>/.cfg/overrides.yaml``
    (no ``.hydra``). The end-of-sweep table, summary.csv/json, tools/summarize.py and the hparams
    fallback read it there; a job folder holding only that record (killed while starting) is a row.
    Before: empty params, and no row for such a folder."""
    sweep = tmp_path / "sweep"
    proc = _two_job_sweep(sweep, tiny_args, "hydra.output_subdir=.cfg")
    assert (sweep / "0" / ".cfg" / "overrides.yaml").is_file() and not (sweep / "0" / ".hydra").exists()
    params = ["solver.base_lr=0.01", "solver.base_lr=0.02"]
    assert [r["params"] for r in json.loads((sweep / "summary.json").read_text())["jobs"]] == params
    with open(sweep / "summary.csv") as f:
        assert [r["params"] for r in csv.DictReader(f)] == params
    printed = _table_rows(proc.stdout, "sweep summary (2 jobs)")
    assert [printed[job].split()[-1] for job in ("0", "1")] == params, proc.stdout[-2000:]

    killed = sweep / "2" / ".cfg"  # hydra wrote its record, then the job was killed before anything else
    killed.mkdir(parents=True)
    for name in ("hydra.yaml", "config.yaml"):
        (killed / name).write_bytes((sweep / "1" / ".cfg" / name).read_bytes())
    record = (sweep / "1" / ".cfg" / "overrides.yaml").read_text()
    (killed / "overrides.yaml").write_text(record.replace("solver.base_lr=0.02", "solver.base_lr=0.03"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/summarize.py"), str(sweep), "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["status"], r["params"]) for r in rows] == [
        ("0", "done", params[0]), ("1", "done", params[1]), ("2", "unknown", "solver.base_lr=0.03")]
    printed = _table_rows(proc.stdout, "job  status")
    assert printed["2"].split()[:2] == ["2", "unknown"] and printed["2"].endswith("solver.base_lr=0.03")

    from hydra.core.hydra_config import HydraConfig

    from panfpn.engine.training.run_log import run_overrides

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))  # train_from_config outside hydra
    assert "solver.base_lr=0.01" in run_overrides(sweep / "0")


def test_a_sweep_writing_hydra_records_into_its_job_folders_shows_its_params(tmp_path, tiny_args):
    """``hydra.output_subdir=.``: hydra's ``overrides.yaml``, ``hydra.yaml`` and ``config.yaml`` lie in
    each job folder itself. Before: empty params in the table and summary files."""
    sweep = tmp_path / "sweep"
    proc = _two_job_sweep(sweep, tiny_args, "hydra.output_subdir=.")
    assert (sweep / "0" / "overrides.yaml").is_file() and not (sweep / "0" / ".hydra").exists()
    params = ["solver.base_lr=0.01", "solver.base_lr=0.02"]
    rows = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(r["job"], r["params"]) for r in rows] == [("0", params[0]), ("1", params[1])]
    printed = _table_rows(proc.stdout, "sweep summary (2 jobs)")
    assert [printed[job].split()[-1] for job in ("0", "1")] == params, proc.stdout[-2000:]


def _swept(sweep: Path) -> None:
    """Three jobs: two keys swept, one shared, one job with a key of its own (added), one deleting
    one, one setting a key named like a summary column."""
    _fake_run(sweep / "0", "done", 0.3, ["solver.base_lr=0.01", "model.merge.score_thresh=0.3", "seed=1",
                                         "train.amp=true"])
    _fake_run(sweep / "1", "done", 0.4, ["solver.base_lr=1e-3", "model.merge.score_thresh=0.7", "seed=1",
                                         "+model.x=5", "train.amp=false", "+status=fast"])
    _fake_run(sweep / "2", "failed", None, ["solver.base_lr=0.02", "model.merge.score_thresh=0.3", "seed=1",
                                            "~weights", "train.amp=true"])
    write_summary([sweep], sweep)


def test_summary_csv_has_a_column_per_param(tmp_path):
    """summary.csv had a job's params in one cell (`solver.base_lr=0.01 model.merge.score_thresh=0.3`):
    a spreadsheet or pandas could not sort or plot by a swept value. Each param now has its column
    (every job's keys; empty where a job lacks it), its value as the job's override wrote it."""
    sweep = tmp_path / "sweep"
    _swept(sweep)
    with open(sweep / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    assert header[:9] == ["job", "status", "params", "solver.base_lr", "model.merge.score_thresh", "train.amp",
                          "model.x", "param:status", "weights"]
    assert header[9] == "overrides" and "seed" not in header  # shared by every job: not a param
    assert [r["solver.base_lr"] for r in table] == ["0.01", "1e-3", "0.02"]
    assert [r["model.merge.score_thresh"] for r in table] == ["0.3", "0.7", "0.3"]
    assert [r["train.amp"] for r in table] == ["true", "false", "true"]
    assert [r["model.x"] for r in table] == ["", "5", ""]
    assert [r["weights"] for r in table] == ["", "", "~"]  # deleted in job 2
    assert [r["param:status"] for r in table] == ["", "fast", ""]
    assert [r["status"] for r in table] == ["done", "done", "failed"]  # the summary's own column kept
    assert table[1]["params"] == ("solver.base_lr=1e-3 model.merge.score_thresh=0.7 +model.x=5 train.amp=false "
                                  "+status=fast")
    assert json.loads((sweep / "summary.json").read_text())["jobs"][1]["param_values"]["model.x"] == "5"


def test_summary_csv_param_columns_read_as_typed_values_in_pandas(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is not installed (not a panfpn dependency)")
    sweep = tmp_path / "sweep"
    _swept(sweep)
    table = pd.read_csv(sweep / "summary.csv")
    assert table["solver.base_lr"].tolist() == [0.01, 0.001, 0.02]
    assert table["train.amp"].tolist() == [True, False, True]
    assert table["model.x"].isna().tolist() == [True, False, True] and table["model.x"][1] == 5


def test_shared_overrides_compare_keys_not_the_params_text():
    """What the page lists as shared by all jobs: by the params' keys. The text match listed a
    swept key given twice on the command line (``seed=1`` before ``seed=2,3``: the last one counts)
    as shared, and hid a shared override whose text is inside a param's value (a path with a space)."""
    from panfpn.engine.sweep.summary import add_params, shared_overrides

    rows = [{"overrides": ["seed=1", "seed=2", "solver.max_iter=4"]},
            {"overrides": ["seed=1", "seed=3", "solver.max_iter=4"]}]
    add_params(rows)
    assert rows[0]["params"] == "seed=2"
    assert shared_overrides(rows) == ["solver.max_iter=4"]
    rows = [{"overrides": ["seed=1", "data.root='/data/copy seed=1 b'"]}, {"overrides": ["seed=1", "data.root=/d"]}]
    add_params(rows)
    assert rows[0]["params"] == "data.root='/data/copy seed=1 b'"
    assert shared_overrides(rows) == ["seed=1"]
