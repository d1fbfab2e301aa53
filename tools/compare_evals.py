"""Compare evaluations: `python tools/compare_evals.py evalA/eval_results.json evalB/eval_results.json [evalC/...] --out compare.html`.

Writes a self-contained page (same style as report.html) comparing every run to the first (A):
summary changes (PQ/SQ/RQ of All/Things/Stuff, mIoU, box/mask AP), per-class PQ/SQ/RQ/TP/FP/FN
changes and per-category box/mask AP changes ("not evaluated" for a run without them). The runs
must have scored the same images (the "image_set" record tools/eval.py writes in
eval_results.json): different image sets, or a run without the record (written before it existed),
are refused with exit code 1 unless --allow-different-images (then the page says so). Category
names come from the categories.json tools/eval.py writes beside eval_results.json (ids are shown
when no run has one). See docs/evaluation.md "Comparing evaluations".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from panfpn.evaluation.compare_page import build_compare, image_set_problems, make_runs
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
    """Category names from each run's categories.json; an id named differently by two runs shows
    both names (and a warning)."""
    names: dict[int, str] = {}
    for path in results:
        cats = path.parent / "categories.json"
        if not cats.is_file():
            continue
        try:
            categories = load_json(cats, what="category list", expect=list)
        except JSONFileError as err:
            raise SystemExit(str(err)) from None
        for c in categories:
            cid, name = int(c["id"]), str(c["name"])
            known = names.get(cid)
            if known is None:
                names[cid] = name
            elif name not in known.split(" / "):
                print(f"warning: {cats} names category {cid} '{name}', an earlier run '{known}'", file=sys.stderr)
                names[cid] = f"{known} / {name}"
    return names


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="eval_results.json of each run; the first is the baseline (A)")
    parser.add_argument("--out", type=Path, default=Path("compare.html"), help="output HTML file")
    parser.add_argument("--allow-different-images", action="store_true",
                        help="compare evaluations of different (or unrecorded) image sets; the page says so")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two or more eval_results.json files")
    runs = make_runs([_load(p) for p in args.runs], [str(p) for p in args.runs])
    problems = image_set_problems(runs)
    if problems and not args.allow_different_images:
        raise SystemExit("cannot compare: " + "; ".join(problems)
                         + ". Compare evaluations of the same images (same data.val and eval.max_images), "
                           "or pass --allow-different-images to compare anyway")
    for problem in problems:
        print(f"warning: {problem} (--allow-different-images)", file=sys.stderr)
    try:
        page = build_compare(runs, _names(*args.runs), problems)
    except ValueError as err:
        raise SystemExit(f"cannot compare {', '.join(map(str, args.runs))}: {err}") from None
    atomic_write(args.out, lambda f: f.write(page.encode("utf-8")))
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
