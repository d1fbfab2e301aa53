"""Summarise training runs made separately: `python tools/summarize.py DIR... [--out OUT]`.

Each DIR is a run folder or a folder holding run folders (a sweep folder, Slurm jobs' output
folders, copies from other machines). Writes summary.csv, summary.json and summary.html (one row
per run: overrides, status, final PQ/SQ/RQ, mIoU, AP, objective, wall time, folder) into OUT
(default: DIR when there is one) and prints the table. Built from each run's own files
(job_status.json, eval_results.json, hydra's overrides.yaml in .hydra/ or another
hydra.output_subdir), the same as a multirun's summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from panfpn.engine.sweep.summary import find_run_dirs, format_table, objective_of, write_summary
from panfpn.utils.closed_stdout import stdout_reader_may_leave


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run folders or folders holding them")
    parser.add_argument("--out", type=Path, default=None, help="where the summary files go (default: the one DIR)")
    parser.add_argument("--title", default=None, help="the HTML page's title")
    args = parser.parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        parser.error("--out is required with several DIRs")
    out = args.out or args.dirs[0]
    try:
        found = find_run_dirs(args.dirs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not found:  # before writing: an earlier summary in OUT is kept
        print(f"no run folders (job_status.json, eval_results.json, hydra's overrides.yaml, train.lock, "
              f"metrics.jsonl or last_checkpoint) below "
              f"{', '.join(map(str, args.dirs))}; nothing written", file=sys.stderr)
        return 1
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: not a folder (the summary files go into it)")
    try:
        rows = write_summary(args.dirs, out, title=args.title)
    except OSError as err:  # a read-only or full place: one line naming it, not a traceback
        print(f"tools/summarize.py: cannot write the summary into {out}: {err}", file=sys.stderr)
        return 2
    with stdout_reader_may_leave():  # `| head`: the files are written
        print(format_table(rows, objective_of(rows)))
        print(f"\nwrote {out / 'summary.csv'}, {out / 'summary.json'}, {out / 'summary.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
