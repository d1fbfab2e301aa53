"""Why the default job is slow or fast on a small machine: `make demo`'s training step under
different thread and DataLoader-worker settings, each in a fresh `tools/train.py` process.

Every setting runs the default experiment (small model, synthetic data) for ``--iters``
iterations without evaluation; the s/iteration of the iterations after ``--warmup`` is read from
``metrics.jsonl`` (train.log_period=1) and printed with its ratio to the first setting measured
in the same run (the default), so machine load cancels out as far as it can.

    python bench/demo_speed.py --iters 60 --warmup 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, extra environment, extra hydra overrides)
SETTINGS = [
    ("default (make demo)", {}, []),
    ("data.num_workers=0", {}, ["data.num_workers=0"]),
    ("1 torch thread, 1 worker", {"OMP_NUM_THREADS": "1"}, []),
    ("1 torch thread, 0 workers", {"OMP_NUM_THREADS": "1"}, ["data.num_workers=0"]),
]


def run_setting(env_extra: dict[str, str], overrides: list[str], iters: int, warmup: int) -> dict[str, float]:
    """Median s/iter and s/iter of data waiting after the warmup, and the process's wall time."""
    with tempfile.TemporaryDirectory(prefix="panfpn_demo_speed_") as run_dir:
        cmd = [sys.executable, str(ROOT / "tools" / "train.py"), f"solver.max_iter={iters}",
               "train.eval_period=-1", "train.log_period=1", f"train.checkpoint_period={iters}",
               "train.progress_bar=false", f"hydra.run.dir={run_dir}", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, **env_extra}, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/iter" in r and r["iter"] > warmup]
    return {"iter": statistics.median(r["time/iter"] for r in steps),
            "data": statistics.median(r["time/data"] for r in steps), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; torch threads default; {args.iters} iterations")
    reference = None
    for name, env_extra, overrides in SETTINGS:
        r = run_setting(env_extra, overrides, args.iters, args.warmup)
        reference = reference or r["iter"]
        print(f"{name:28s} {r['iter']:.3f} s/iter (data wait {r['data']:.3f})  "
              f"{r['iter'] / reference:.2f}x of the default  process {r['wall']:.0f} s")


if __name__ == "__main__":
    main()
