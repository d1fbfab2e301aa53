"""Learning benchmark: the default experiment (small model, synthetic data, from scratch) on CPU.

Trains with ``tools/train.py``'s function, evaluating on the held-out synthetic validation split
every ``--eval-every`` iterations, and prints the learning curve: PQ (All/Things/Stuff) against
iterations and wall-clock minutes. Target (issue 5): PQ >= 50 within 30 minutes on 2 CPU cores.

    python bench/learn_synthetic.py --iters 3000 --eval-every 500
    python bench/learn_synthetic.py --iters 3000 -- data.batch_size=8   # extra hydra overrides
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from panfpn.engine.train_run import train_from_config

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--out", default=None, help="run dir to keep (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides")
    args = parser.parse_args()
    run_dir = Path(args.out or tempfile.mkdtemp(prefix="panfpn_learn_"))
    overrides = [f"solver.max_iter={args.iters}", f"train.eval_period={args.eval_every}",
                 f"train.checkpoint_period={args.eval_every}", "train.log_period=50",
                 "train.progress_bar=false", f"output_dir={run_dir}", *args.overrides]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    t0 = time.perf_counter()
    train_from_config(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"run dir {run_dir}; total wall time {wall / 60:.1f} min (data generation included)")
    print(f"{'iter':>6s} {'minutes':>8s} {'PQ':>6s} {'PQ_th':>6s} {'PQ_st':>6s} {'mIoU':>6s} {'maskAP':>7s}")
    for r in rows:
        if r["kind"] == "eval":
            print(f"{r['iter']:6d} {r['time/elapsed_s'] / 60:8.1f} {r['pq/All']:6.1f} {r['pq/Things']:6.1f} "
                  f"{r['pq/Stuff']:6.1f} {r['sem_seg/mIoU']:6.1f} {r.get('segm/AP', float('nan')):7.1f}")


if __name__ == "__main__":
    main()
