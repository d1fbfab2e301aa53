"""What a finished `tools/train.py` run prints: the final evaluation's table once (in the log), then
on stdout where the run's files are and the objective."""

import sys
from pathlib import Path

from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]


def test_a_finished_training_prints_its_table_once_and_names_its_files(tmp_path, tiny_args):
    # Before: stdout repeated the table the log had just shown and named no file.
    run_dir = tmp_path / "run"
    proc = run([sys.executable, str(ROOT / "tools/train.py"), *tiny_args, f"hydra.run.dir={run_dir}"],
               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    everything = proc.stdout + proc.stderr
    assert everything.count("PQ     SQ     RQ") == 1, everything[-3000:]
    assert "PQ     SQ     RQ" in (run_dir / "log.txt").read_text()
    lines = proc.stdout.splitlines()
    assert lines == [f"final checkpoint {run_dir}/model_final.pth; in {run_dir}: eval_results.json, "
                     "job_status.json says done at iteration 4 of 4",
                     lines[-1]], proc.stdout
    assert lines[-1].startswith("objective pq/All = ") and lines[-1].endswith("(maximize)")
    assert (run_dir / "model_final.pth").is_file() and (run_dir / "eval_results.json").is_file()
