"""Compare two eval runs: `python tools/compare_evals.py runA/eval_results.json runB/eval_results.json --out compare.html`.

Writes a self-contained page (same style as report.html) with the All/Things/Stuff deltas and the
per-class PQ deltas (B - A) sorted, worst first. Category names come from the categories.json that
tools/eval.py writes beside eval_results.json (ids are shown when neither run has one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from panfpn.evaluation.report import build_compare
from panfpn.utils.atomic import atomic_write
from panfpn.utils.json_file import JSONFileError, load_json


def _load(path: Path) -> dict:
    try:
        data = load_json(path, what="eval results", expect=dict)
    except JSONFileError as err:
        raise SystemExit(str(err)) from None
    if "panoptic" not in data or "per_class" not in data["panoptic"]:
        raise SystemExit(f"{path} is not an eval_results.json of tools/eval.py (no panoptic.per_class)")
    return data


def _names(*results: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for path in results:
        cats = path.parent / "categories.json"
        if cats.is_file():
            try:
                categories = load_json(cats, what="category list", expect=list)
            except JSONFileError as err:
                raise SystemExit(str(err)) from None
            for c in categories:
                names.setdefault(int(c["id"]), str(c["name"]))
    return names


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="eval_results.json of run A (the baseline)")
    parser.add_argument("run_b", type=Path, help="eval_results.json of run B (compared to A)")
    parser.add_argument("--out", type=Path, default=Path("compare.html"), help="output HTML file")
    args = parser.parse_args(argv)
    a, b = _load(args.run_a), _load(args.run_b)
    try:
        page = build_compare(a, b, _names(args.run_a, args.run_b), labels=(str(args.run_a), str(args.run_b)))
    except ValueError as err:
        raise SystemExit(f"cannot compare {args.run_a} and {args.run_b}: {err}") from None
    atomic_write(args.out, lambda f: f.write(page.encode("utf-8")))
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
