"""Self-contained HTML pages of evaluation results: ``report.html`` (and the pieces
``compare.html``, :mod:`panfpn.evaluation.compare_page`, shares with it).

No network and no server: CSS and the few lines of sorting JavaScript are inline, the chart is
inline SVG and the worst images are base64 PNGs. Input is the eval_results.json dict
(fractions; per-class keys may be str after JSON) and ``{category id: name}``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.coco_ap import ap_text
from panfpn.evaluation.cityscapes_pixel import SCORES as CITYSCAPES_PIXEL_SCORES
from panfpn.evaluation.page_style import SORT_JS, STYLE
from panfpn.evaluation.report_sections import STYLE as SECTION_STYLE
from panfpn.evaluation.report_sections import ReportExtras, browse_section, confusion_table, context_table
from panfpn.evaluation.worst_images import ImageScore
from panfpn.utils.atomic import atomic_write, write_json_atomic
from panfpn.utils.percent import percent_text

logger = logging.getLogger("panfpn")


def _page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}{SECTION_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(body)}<script>{SORT_JS}</script></body></html>\n")


def wide(table: str) -> str:
    """``table`` in a box that scrolls sideways when the table is wider than the page (many runs
    or long category names), so that the page itself never does."""
    return f'<div class="wide">{table}</div>'


def _name(names: Mapping[int, str], cat: Any) -> str:
    return names.get(int(cat), f"category {cat}")


def _cell(value: Any, text: str | None = None, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<td data-v="{html.escape(str(value))}"{attr}>{html.escape(text if text is not None else str(value))}</td>'


def summary_table(panoptic: Mapping[str, Any]) -> str:
    """All / Things / Stuff PQ, SQ, RQ (percent) and N."""
    rows = "".join(f"<tr><td>{s}</td>" + "".join(f"<td>{100 * panoptic[s][k]:.2f}</td>" for k in ("pq", "sq", "rq"))
                   + f"<td>{panoptic[s]['n']}</td></tr>" for s in ("All", "Things", "Stuff"))
    return ('<table id="summary"><thead><tr><th></th><th>PQ</th><th>SQ</th><th>RQ</th><th>N</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _scored(r: Mapping[str, Any]) -> bool:
    """A category with no ground truth and no prediction has no PQ (left out of the means)."""
    return int(r["tp"]) + int(r["fp"]) + int(r["fn"]) > 0


AP_COLUMNS = (("bbox", "box AP"), ("segm", "mask AP"))  # eval_results.json task -> column


def category_ap(metrics: Mapping[str, Any]) -> dict[str, dict[int, float | None]]:
    """``{"bbox"|"segm": {category id: AP fraction, None where undefined}}`` from eval_results.json's
    ``per_class`` (Detectron2's ``AP-<name>``); a task evaluated without AP, or recorded by an older
    eval_results.json without ``per_class``, is left out."""
    out: dict[str, dict[int, float | None]] = {}
    for task, _ in AP_COLUMNS:
        per = metrics[task].get("per_class") if isinstance(metrics.get(task), Mapping) else None
        if isinstance(per, Mapping):
            out[task] = {int(c): float(v) if isinstance(v, (int, float)) and v >= 0 else None for c, v in per.items()}
    return out


def ap_cell(per_category: Mapping[int, float | None], cat: int, absent: str = "–") -> str:
    """One category's AP in percent; ``n/a`` (as :func:`ap_text` prints COCO's -1) where it has no
    ground truth; ``absent`` where the category was not scored (a stuff category)."""
    if int(cat) not in per_category:
        return _cell(-2, absent, "muted")
    value = per_category[int(cat)]
    return _cell(f"{100 * value:.4f}", ap_text(value)) if value is not None else _cell(-1, "n/a", "muted")


def per_class_table(per_class: Mapping[Any, Mapping], names: Mapping[int, str],
                    extras: ReportExtras | None = None,
                    ap: Mapping[str, Mapping[int, float | None]] | None = None) -> str:
    """One row per category; click a header to sort by it. Unscored categories show "n/a". With
    ``ap`` (:func:`category_ap`): box / mask AP after RQ. With ``extras``: thing or stuff, and the
    counts of predicted and ground-truth segments and of instances dropped by the merge's score
    threshold."""
    ap = ap or {}
    heads = ["category", "PQ", "SQ", "RQ", *(label for task, label in AP_COLUMNS if task in ap), "TP", "FP", "FN"]
    if extras is not None:
        heads += ["kind", "predicted", "GT", "dropped"]
    head = "".join(f'<th class="sortable">{h}</th>' for h in heads)
    rows = []
    for cat, r in sorted(per_class.items(), key=lambda kv: -kv[1]["pq"]):
        cells = [_cell(_name(names, cat))]
        cells += [_cell(f"{100 * r[k]:.4f}", f"{100 * r[k]:.2f}") if _scored(r) else _cell(-1, "n/a", "muted")
                  for k in ("pq", "sq", "rq")]
        cells += [ap_cell(ap[task], int(cat)) for task, _ in AP_COLUMNS if task in ap]
        cells += [_cell(int(r[k])) for k in ("tp", "fp", "fn")]
        kind = ""
        if extras is not None:
            kind = extras.kinds.get(int(cat), "?")
            cells += [_cell(kind, cls=kind)] + [_cell(n) for n in extras.counts.get(int(cat), [0, 0, 0])]
        attr = f' data-kind="{kind}"' if kind else ""
        rows.append(f'<tr data-category="{int(cat)}"{attr}>{"".join(cells)}</tr>')
    return f'<table id="per-class" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def ap_note(metrics: Mapping[str, Any], ap: Mapping[str, Any]) -> str:
    """What the per-class table's AP columns mean, or why they are missing though AP was computed."""
    labels = [label for task, label in AP_COLUMNS if task in ap]
    if labels:
        return (f'<p id="ap-note" class="muted">{" / ".join(labels)}: COCO AP (IoU 0.50:0.95, all areas) of the '
                "category's instances (Detectron2's AP-&lt;name&gt;); n/a: no ground-truth instance; "
                "–: a stuff category (no instances).</p>")
    if any(task in metrics for task, _ in AP_COLUMNS):
        return ('<p id="ap-note" class="muted">AP per category not recorded (eval_results.json written before '
                "it was).</p>")
    return ""


def signed_text(value: float, decimals: int = 2) -> str:
    """A change as text: ``+1.25`` / ``-0.50``; one that rounds to zero is ``0.00`` (no change, not
    a ``+0.00`` gain)."""
    text = f"{value:+.{decimals}f}"
    return text[1:] if float(text) == 0 else text


def bar_chart(values: Sequence[tuple[str, float]], *, signed: bool = False) -> str:
    """Horizontal bars (inline SVG), one per (label, percent) in the given order."""
    row, label_w, bar_w = 16, 170, 420
    zero = label_w + (bar_w / 2 if signed else 0)
    scale = max([abs(v) for _, v in values] + [1e-9]) if signed else 100.0
    half = bar_w / 2 if signed else bar_w
    parts = []
    for i, (label, v) in enumerate(values):
        y, w = i * row, abs(v) / scale * half
        x = zero - w if v < 0 else zero
        color = "#b00020" if v < 0 else ("#1b7f3a" if signed else "#3b6fb6")
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="11">{html.escape(label[:26])}</text>'
                     f'<rect class="bar" x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="{color}">'
                     f'<title>{html.escape(label)}: {v:.2f}</title></rect>'
                     f'<text x="{label_w + bar_w + 6}" y="{y + 12}" font-size="11">{signed_text(v) if signed else f"{v:.2f}"}</text>')
    height = max(row, row * len(values))
    return (f'<svg width="{label_w + bar_w + 60}" height="{height}" '
            f'role="img">{"".join(parts)}</svg>')


def png_data_uri(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8 ``[H, W, 3]`` image."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _errors_list(score: ImageScore, names: Mapping[int, str]) -> str:
    items = [f"missed (FN): {_name(names, c)} ×{n}" for c, n in score.missed.items()]
    items += [f"false (FP): {_name(names, c)} ×{n}" for c, n in score.false.items()]
    items += [f"wrong class: {_name(names, g)} predicted as {_name(names, p)}" for g, p in score.wrong_class]
    if not items:
        return '<p class="muted">no segment errors</p>'
    return '<ul class="errors">' + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>"


def worst_images_section(worst: Sequence[ImageScore], names: Mapping[int, str]) -> str:
    """Ground truth | prediction overlays of the lowest-PQ images with their errors by category."""
    figs = []
    for s in worst:
        img = f'<img alt="image {html.escape(str(s.image_id))}" src="{png_data_uri(s.overlay)}">' if s.overlay is not None else ""
        figs.append(f'<figure class="worst"><figcaption>image {html.escape(str(s.image_id))}: PQ '
                    f"{100 * s.pq:.2f}</figcaption>{img}{_errors_list(s, names)}</figure>")
    return '<div id="worst">' + "".join(figs) + "</div>" if figs else '<p class="muted">no images kept</p>'


def _other_metrics(metrics: Mapping[str, Any]) -> str:
    rows = []
    if "sem_seg" in metrics:
        rows.append(f"<tr><td>mIoU</td><td>{100 * metrics['sem_seg']['mIoU']:.2f}</td></tr>")
    for task in ("bbox", "segm"):
        if task in metrics:
            rows.append(f"<tr><td>{task} AP</td><td>{ap_text(metrics[task]['AP'])}</td></tr>"
                        f"<tr><td>{task} AP50</td><td>{ap_text(metrics[task]['AP50'])}</td></tr>")
    for key in ("AP", "AP50") if "cityscapes_ap" in metrics else ():  # cityscapesScripts' instance-level AP
        rows.append(f"<tr><td>Cityscapes {key}</td><td>{percent_text(metrics['cityscapes_ap'][key])}</td></tr>")
    for key in CITYSCAPES_PIXEL_SCORES if "cityscapes_sem_seg" in metrics else ():  # its pixel level
        rows.append(f"<tr><td>Cityscapes {key}</td><td>{percent_text(metrics['cityscapes_sem_seg'][key])}</td></tr>")
    return f'<table id="other-metrics"><tbody>{"".join(rows)}</tbody></table>' if rows else ""


def area_table(by_area: Mapping[str, Any]) -> str:
    """PQ / SQ / RQ (All, Things, Stuff) and TP / FP / FN of small, medium and large segments."""
    head = "".join(f"<th>{h}</th>" for h in ("size", "PQ", "SQ", "RQ", "PQ things", "PQ stuff", "TP", "FP", "FN"))
    limits = by_area.get("thresholds", {})
    lo, hi = limits.get("small_below", 1024), limits.get("large_above", 9216)
    sizes = {"small": f"area < {lo}", "medium": f"{lo} ≤ area ≤ {hi}", "large": f"area > {hi}"}
    rows = []
    for bucket, label in sizes.items():
        r = by_area[bucket]
        cells = [f"{100 * r['All'][k]:.2f}" for k in ("pq", "sq", "rq")]
        cells += [f"{100 * r[s]['pq']:.2f}" if r[s]["n"] else "n/a" for s in ("Things", "Stuff")]
        cells += [str(int(r[k])) for k in ("tp", "fp", "fn")]
        rows.append(f'<tr data-size="{bucket}"><td>{bucket} ({html.escape(label)})</td>'
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<table id="pq-by-area"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="muted">A true positive or a missed segment counts in the size of its ground-truth segment, '
            "a false positive in the size of the prediction.</p>")


def build_report(metrics: Mapping[str, Any], names: Mapping[int, str], worst: Sequence[ImageScore] = (),
                 title: str = "Panoptic evaluation", extras: ReportExtras | None = None) -> str:
    """The whole ``report.html`` page (a string); ``extras`` add the run's context, the per-class
    counts, the wrong-class confusion and the image browser."""
    pan = metrics["panoptic"]
    per_class = pan["per_class"]
    scored = sorted(((c, r) for c, r in per_class.items() if _scored(r)), key=lambda kv: -kv[1]["pq"])
    chart = bar_chart([(_name(names, c), 100 * r["pq"]) for c, r in scored])
    ap = category_ap(metrics)
    per_class_head = "Per class: PQ and AP (click a header to sort)" if ap else "Per class (click a header to sort)"
    body = [context_table(extras.context) if extras is not None else "",
            f'<p class="muted">{metrics.get("num_images", "?")} images</p>',
            "<h2>Panoptic quality</h2>", summary_table(pan), _other_metrics(metrics),
            *(["<h2>PQ by segment area</h2>", area_table(metrics["panoptic_by_area"])]
              if "panoptic_by_area" in metrics else []),
            f"<h2>{per_class_head}</h2>", ap_note(metrics, ap), wide(per_class_table(per_class, names, extras, ap)),
            '<h2>PQ per class (categories with ground truth or predictions)</h2><div id="pq-chart">', chart, "</div>",
            f"<h2>Lowest per-image PQ ({len(worst)} images)</h2>", worst_images_section(worst, names)]
    if extras is not None:
        body += ["<h2>Wrong-class matches (ground truth → prediction, IoU > 0.5)</h2>",
                 wide(confusion_table(extras.confusion, names)),
                 f"<h2>All images ({len(extras.images)}, lowest PQ first)</h2>", browse_section(extras.images)]
    return _page(title, body)


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], metadata: DatasetMetadata,
                 worst: Sequence[ImageScore], title: str = "Panoptic evaluation",
                 extras: ReportExtras | None = None) -> None:
    """report.html (self-contained page) and categories.json (names for tools/compare_evals.py) in
    ``out_dir``, beside eval_results.json; ``metrics`` as in eval_results.json."""
    out_dir = Path(out_dir)
    if extras is not None and not extras.kinds:
        extras.kinds = {c.id: "thing" if c.isthing else "stuff" for c in metadata.categories}
    names = {c.id: c.name for c in metadata.categories}
    write_json_atomic(out_dir / "categories.json",
                      [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in metadata.categories])
    page = build_report(metrics, names, worst, title=title, extras=extras)
    atomic_write(out_dir / "report.html", lambda f: f.write(page.encode("utf-8")))
    logger.info("wrote %s", out_dir / "report.html")


__all__ = ["AP_COLUMNS", "ReportExtras", "ap_cell", "ap_note", "area_table", "bar_chart", "build_report", "category_ap",
           "png_data_uri", "signed_text", "wide", "write_report"]
