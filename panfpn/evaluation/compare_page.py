"""``compare.html``: two or more evaluations (``eval_results.json`` dicts) against the first.

Same self-contained style as ``report.html`` (:mod:`panfpn.evaluation.report`): a table of the runs
with their image counts and image-set digests, what each evaluation ran with (the settings that
differ marked), the summary (PQ/SQ/RQ of All/Things/Stuff, mIoU,
box/mask AP) of each run with its change from the baseline, the per-class PQ/SQ/RQ/TP/FP/FN changes
(sortable), the per-category box / mask AP of each run and its change (where recorded; "not
evaluated" for a run without it) and one ΔPQ chart per compared run. A change that rounds to zero
is shown as ``0.00`` (grey), never as a ``+0.00`` gain.
"""

from __future__ import annotations

import html
import string
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from panfpn.evaluation.image_set import KEY as IMAGE_SET_KEY
from panfpn.evaluation.report import (AP_COLUMNS, _cell, _name, _page, _scored, ap_cell, bar_chart, category_ap,
                                      signed_text, wide)

NA = -1e9  # sort value of "n/a" cells
NOT_EVALUATED = "not evaluated"  # a metric the run's eval_results.json does not have


@dataclass(frozen=True)
class Run:
    """One evaluation: its letter on the page (A = the baseline), its file and its results."""

    letter: str
    source: str
    metrics: Mapping[str, Any]


def make_runs(metrics: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> list[Run]:
    """Runs lettered A, B, C, ... (A26+ beyond Z) in the given order."""
    if len(metrics) < 2:
        raise ValueError(f"compare needs two or more evaluations, got {len(metrics)}")
    letters = [string.ascii_uppercase[i] if i < 26 else f"A{i}" for i in range(len(metrics))]
    return [Run(k, str(s), m) for k, s, m in zip(letters, sources, metrics)]


# ----- image sets --------------------------------------------------------------------------------

def image_count(run: Run) -> Any:
    record = run.metrics.get(IMAGE_SET_KEY)
    return record["count"] if isinstance(record, Mapping) else run.metrics.get("num_images", "?")


def image_set_problems(runs: Sequence[Run]) -> list[str]:
    """Why the runs may not have scored the same images (empty: checked, the same). A run
    without a digest (eval_results.json written before the record existed) cannot be checked."""
    problems = []
    for run in runs:
        record = run.metrics.get(IMAGE_SET_KEY)
        if not isinstance(record, Mapping) or not record.get("sha256"):
            problems.append(f"{run.source} records no image set ({image_count(run)} images, which ones "
                            "unknown: written before eval_results.json recorded them), so the image sets "
                            "cannot be checked")
    if problems:
        return problems
    base = runs[0]
    for run in runs[1:]:
        a, b = base.metrics[IMAGE_SET_KEY], run.metrics[IMAGE_SET_KEY]
        if (a["count"], a["sha256"]) != (b["count"], b["sha256"]):
            other = "other images" if a["count"] == b["count"] else "a different number of images"
            problems.append(f"{base.source} scored {a['count']} images and {run.source} scored {b['count']} "
                            f"({other}; image-set sha256 {a['sha256'][:12]}… vs {b['sha256'][:12]}…)")
        elif a.get("gt_sha256") and b.get("gt_sha256") and a["gt_sha256"] != b["gt_sha256"]:
            problems.append(f"{base.source} and {run.source} scored {a['count']} images of the same ids but with "
                            "other ground truth (another dataset, split or annotation file numbered alike; "
                            f"ground-truth sha256 {a['gt_sha256'][:12]}… vs {b['gt_sha256'][:12]}…)")
    return problems


def _unchecked_ground_truth(runs: Sequence[Run]) -> list[str]:
    """The runs whose image-set record has no ground-truth digest (written before it was recorded)."""
    return [r.letter for r in runs if not (r.metrics.get(IMAGE_SET_KEY) or {}).get("gt_sha256")]


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        record = run.metrics.get(IMAGE_SET_KEY)
        digest = record.get("sha256") if isinstance(record, Mapping) else None
        rows.append(f"<tr><td>{run.letter}</td><td>{html.escape(run.source)}</td><td>{image_count(run)}</td>"
                    f"<td>{html.escape(digest[:16] + '…') if digest else 'not recorded'}</td></tr>")
    return ('<table id="runs"><thead><tr><th>run</th><th>eval_results.json</th><th>images</th>'
            f'<th>image set (sha256)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _image_check(runs: Sequence[Run], problems: Sequence[str]) -> str:
    if not problems:
        record = runs[0].metrics[IMAGE_SET_KEY]
        unchecked = _unchecked_ground_truth(runs)
        how = ("ids and ground truth" if not unchecked else
               f"by id only: {', '.join(unchecked)} recorded no ground-truth digest (written before it was)")
        return (f'<p id="image-check" class="muted">All {len(runs)} evaluations scored the same '
                f'{record["count"]} images ({html.escape(how)}; image-set sha256 '
                f'{html.escape(record["sha256"][:16])}…).</p>')
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    return (f'<div id="image-check" class="neg"><p>Not checked to be the same images '
            f'(--allow-different-images): the deltas may come from the images, not the models.</p>'
            f'<ul class="errors">{items}</ul></div>')


# ----- what each evaluation ran with ------------------------------------------------------------

def _context(run: Run) -> Mapping[str, Any] | None:
    context = run.metrics.get("context")
    return context if isinstance(context, Mapping) else None


def settings_section(runs: Sequence[Run]) -> str:
    """Each run's settings (eval_results.json's ``context``: checkpoint, iteration, data, model,
    merge rules and thresholds, test transform) side by side; the items that differ are marked and
    named first, so a delta is not read as the model's alone."""
    contexts = [_context(r) for r in runs]
    labels = list(dict.fromkeys(k for c in contexts if c for k in c))
    missing = [r.letter for r, c in zip(runs, contexts) if c is None]
    if not labels:
        return ('<p id="settings" class="neg">No evaluation recorded its settings (checkpoint, merge rules and '
                "thresholds): eval_results.json written before it did, or by a training. Check them before "
                "reading a change as the model's.</p>")
    values = {k: [("not recorded" if c is None else str(c.get(k, "-"))) for c in contexts] for k in labels}
    differ = [k for k in labels if len({str(c.get(k, "-")) for c in contexts if c is not None}) > 1]
    notes = []
    if differ:
        notes.append(f"The evaluations differ in: {', '.join(differ)} (marked): a change may come from these.")
    if missing:
        notes.append(f"Settings not recorded by {', '.join(missing)} (eval_results.json written before they were, "
                     "or by a training).")
    head = "<th>setting</th>" + "".join(f"<th>{r.letter}</th>" for r in runs)
    rows = "".join(f'<tr{" class=neg" if k in differ else ""}><th>{html.escape(k)}</th>'
                   + "".join(f"<td>{html.escape(v)}</td>" for v in values[k]) + "</tr>" for k in labels)
    note = f'<p class="{"neg" if notes else "muted"}">{html.escape(" ".join(notes) or "Same settings.")}</p>'
    return (f'<div id="settings">{note}<div class="wide"><table id="settings-table"><thead><tr>{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table></div></div>")


# ----- summary and per-class changes -------------------------------------------------------------

SUMMARY_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"{k.upper()} {s}", ("panoptic", s, k)) for s in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq")),
    ("mIoU", ("sem_seg", "mIoU")),
    *((f"{task} {k}", (task, k)) for task in ("bbox", "segm") for k in ("AP", "AP50", "AP75")),
)


_MISSING = object()


def _lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path``; ``_MISSING`` when the run has none (e.g. evaluated without AP)."""
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _value(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The metric at ``path`` in percent; None when absent (AP not computed) or undefined (null,
    COCO's -1 for no ground truth)."""
    node = _lookup(metrics, path)
    return None if not isinstance(node, (int, float)) or node < 0 else 100.0 * float(node)


def _absent(metrics: Mapping[str, Any], path: Sequence[str]) -> bool:
    """The run has no value at ``path`` at all, as opposed to an undefined one (null, -1)."""
    return _lookup(metrics, path) is _MISSING


def _value_cell(v: float | None, absent: bool = False) -> str:
    if absent:
        return _cell(NA, NOT_EVALUATED, "muted")
    return _cell(f"{v:.4f}", f"{v:.2f}") if v is not None else _cell(NA, "n/a", "muted")


def _delta_cell(d: float | None, decimals: int = 2, *, worse_if_up: bool = False) -> str:
    """A change: ``n/a`` when undefined, ``0.00`` (grey) when it rounds to zero, else signed and
    coloured by whether it is a gain (for FP and FN an increase is a loss)."""
    if d is None:
        return _cell(NA, "n/a", "muted")
    text = signed_text(d, decimals)
    cls = "muted" if not text.startswith(("+", "-")) else ("neg" if (d < 0) != worse_if_up else "pos")
    return _cell(f"{d:.4f}", text, cls)


def summary_table(runs: Sequence[Run]) -> str:
    """One row per metric: the baseline's value, then each run's value and its change."""
    head = "<th>metric</th><th>A</th>" + "".join(f"<th>{r.letter}</th><th>Δ {r.letter}</th>" for r in runs[1:])
    rows = []
    for label, path in SUMMARY_ROWS:
        values = [_value(r.metrics, path) for r in runs]
        if all(v is None for v in values):
            continue  # e.g. AP not computed by any run
        cells = [_cell(label), _value_cell(values[0], _absent(runs[0].metrics, path))]
        for run, v in zip(runs[1:], values[1:]):
            cells += [_value_cell(v, _absent(run.metrics, path)),
                      _delta_cell(None if v is None or values[0] is None else v - values[0])]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _per_class_of(runs: Sequence[Run]) -> list[dict[int, Mapping[str, Any]]]:
    per = [{int(k): v for k, v in r.metrics["panoptic"]["per_class"].items()} for r in runs]
    for run, cats in zip(runs[1:], per[1:]):
        if set(cats) != set(per[0]):
            raise ValueError(f"the runs have different categories: only in A {sorted(set(per[0]) - set(cats))}, "
                             f"only in {run.letter} {sorted(set(cats) - set(per[0]))}")
    return per


def _pq_change(base: Mapping[str, Any], other: Mapping[str, Any], key: str = "pq") -> float | None:
    """Points of change of a per-class PQ/SQ/RQ; None unless the class is scored in both runs."""
    return 100.0 * (other[key] - base[key]) if _scored(base) and _scored(other) else None


def per_class_table(runs: Sequence[Run], names: Mapping[int, str]) -> str:
    """Every category: the baseline's PQ, each run's PQ and its PQ/SQ/RQ/TP/FP/FN changes; sorted
    by run B's ΔPQ, largest loss first (categories without a ΔPQ last); click a header to re-sort."""
    per = _per_class_of(runs)
    base = per[0]
    order = sorted(base, key=lambda c: (_pq_change(base[c], per[1][c]) is None,
                                        _pq_change(base[c], per[1][c]) or 0.0, c))
    head = ["category", "PQ A"]
    for r in runs[1:]:
        head += [f"PQ {r.letter}"] + [f"Δ{k} {r.letter}" for k in ("PQ", "SQ", "RQ", "TP", "FP", "FN")]
    rows = []
    for c in order:
        cells = [_cell(_name(names, c)), _value_cell(100.0 * base[c]["pq"] if _scored(base[c]) else None)]
        for cats in per[1:]:
            r = cats[c]
            cells.append(_value_cell(100.0 * r["pq"] if _scored(r) else None))
            cells += [_delta_cell(_pq_change(base[c], r, k)) for k in ("pq", "sq", "rq")]
            cells += [_delta_cell(int(r[k]) - int(base[c][k]), 0, worse_if_up=k != "tp") for k in ("tp", "fp", "fn")]
        rows.append(f'<tr data-category="{c}">{"".join(cells)}</tr>')
    thead = "".join(f'<th class="sortable">{html.escape(h)}</th>' for h in head)
    return (f'<table id="per-class" class="sortable"><thead><tr>{thead}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


# ----- per-category AP ---------------------------------------------------------------------------

def _ap_change(base: Mapping[int, float | None] | None, other: Mapping[int, float | None] | None,
               cat: int) -> float | None:
    """Points of change of a category's AP; None unless both runs have it defined."""
    a = base.get(cat) if base is not None else None
    b = other.get(cat) if other is not None else None
    return None if a is None or b is None else 100.0 * (b - a)


def _ap_cell(per: Mapping[int, float | None] | None, cat: int) -> str:
    return _cell(NA, NOT_EVALUATED, "muted") if per is None else ap_cell(per, cat, absent=NOT_EVALUATED)


def per_class_ap_table(runs: Sequence[Run], names: Mapping[int, str]) -> str:
    """Every category with AP in some run: box / mask AP of A, then each run's AP and its change;
    sorted by run B's Δ mask AP (box AP when A or B has no mask AP), largest loss first (categories
    without a change last); empty when no run recorded AP per category."""
    aps = [category_ap(r.metrics) for r in runs]
    tasks = [(t, label) for t, label in AP_COLUMNS if any(t in a for a in aps)]
    if not tasks:
        return ""
    cats = sorted({c for a in aps for per in a.values() for c in per})
    key = "segm" if "segm" in aps[0] and "segm" in aps[1] else "bbox"
    order = sorted(cats, key=lambda c: ((d := _ap_change(aps[0].get(key), aps[1].get(key), c)) is None, d or 0.0, c))
    head = ["category", *(f"{label} A" for _, label in tasks)]
    for r in runs[1:]:
        head += [h for _, label in tasks for h in (f"{label} {r.letter}", f"Δ{label} {r.letter}")]
    rows = []
    for c in order:
        cells = [_cell(_name(names, c))] + [_ap_cell(aps[0].get(t), c) for t, _ in tasks]
        for a in aps[1:]:
            for t, _ in tasks:
                cells += [_ap_cell(a.get(t), c), _delta_cell(_ap_change(aps[0].get(t), a.get(t), c))]
        rows.append(f'<tr data-category="{c}">{"".join(cells)}</tr>')
    thead = "".join(f'<th class="sortable">{html.escape(h)}</th>' for h in head)
    return (f'<table id="per-class-ap" class="sortable"><thead><tr>{thead}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def ap_absence_notes(runs: Sequence[Run]) -> list[str]:
    """Why a run's per-category AP column says "not evaluated": evaluated without it, or an older
    eval_results.json that has the AP summary but no ``per_class``."""
    notes = []
    for run in runs:
        recorded = category_ap(run.metrics)
        for task, label in AP_COLUMNS:
            if task in recorded:
                continue
            why = ("its eval_results.json has no per-category AP (written before it was recorded)"
                   if isinstance(run.metrics.get(task), Mapping) else "evaluated without it")
            notes.append(f"{label} of {run.letter}: {why}")
    return notes


def _ap_section(runs: Sequence[Run], names: Mapping[int, str]) -> list[str]:
    table = per_class_ap_table(runs, names)
    if not table:
        return []
    notes = ap_absence_notes(runs)
    note = (f'<p id="ap-absent" class="muted">{NOT_EVALUATED}: {html.escape("; ".join(notes))}.</p>'
            if notes else "")
    return ["<h2>AP per category (sorted by ΔAP of B, click a header to re-sort)</h2>",
            '<p class="muted">COCO AP (IoU 0.50:0.95, all areas) of each thing category, Detectron2\'s '
            "AP-&lt;name&gt;; sorted by B's Δ mask AP (box AP without masks); n/a: no ground-truth instance in "
            "the run (Detectron2's nan).</p>",
            note, wide(table)]


def _charts(runs: Sequence[Run], names: Mapping[int, str]) -> list[str]:
    per = _per_class_of(runs)
    parts = []
    for run, cats in zip(runs[1:], per[1:]):
        changes = sorted(((d, c) for c in per[0] if (d := _pq_change(per[0][c], cats[c])) is not None))
        parts += [f"<h2>ΔPQ per class: {run.letter} − A</h2>",
                  f'<div class="pq-chart" id="pq-chart-{run.letter}">',
                  bar_chart([(_name(names, c), d) for d, c in changes], signed=True), "</div>"]
    return parts


def build_compare(runs: Sequence[Run], names: Mapping[int, str], image_problems: Sequence[str] = ()) -> str:
    """The whole ``compare.html`` page (a string); ``image_problems`` as :func:`image_set_problems`
    (shown as a warning; the caller decides whether to refuse them)."""
    if len(runs) < 2:
        raise ValueError(f"compare needs two or more evaluations, got {len(runs)}")
    per = _per_class_of(runs)
    unscored = sorted(c for c in per[0] if not all(_scored(cats[c]) for cats in per))
    body = [wide(_runs_table(runs)), _image_check(runs, image_problems), settings_section(runs),
            '<p class="muted">Δ = run − A, in points; a change that rounds to zero is shown as 0.00 (no '
            'change); not evaluated: the run did not compute it; n/a: undefined, e.g. the class has no ground truth '
            'and no prediction in a run.</p>',
            "<h2>Summary</h2>", wide(summary_table(runs)),
            "<h2>Per class (sorted by ΔPQ of B, click a header to re-sort)</h2>", wide(per_class_table(runs, names)),
            *_ap_section(runs, names), *_charts(runs, names)]
    if unscored:
        body.append('<p id="unscored" class="muted">no ground truth and no prediction in at least one run '
                    "(no PQ change shown): " + html.escape(", ".join(_name(names, c) for c in unscored)) + "</p>")
    return _page(f"Panoptic evaluation: comparison of {len(runs)} runs", body)


__all__ = ["Run", "ap_absence_notes", "build_compare", "image_set_problems", "make_runs", "per_class_ap_table",
           "per_class_table", "settings_section", "summary_table"]
