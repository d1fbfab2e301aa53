"""``summary.html``: a sweep's jobs in one self-contained page, in report.html's style.

Click a column header to sort by it; each metric cell carries a bar scaled to the column's best
value, so the jobs compare at a glance. Failed and interrupted jobs are marked, the best job
(by the recorded objective) is highlighted.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

from panfpn.engine.progress import duration
from panfpn.engine.sweep.summary import (METRIC_NAMES, best_job, no_best_reason, objective_decimals,
                                        shared_overrides, status_text, tied_with_best)
from panfpn.evaluation.page_style import SORT_JS, STYLE

EXTRA_STYLE = """
td.metric{background-repeat:no-repeat;background-size:var(--w) 3px;background-position:right bottom;
 background-image:linear-gradient(#7ea2d6,#7ea2d6);padding-bottom:5px}
#jobs th:nth-child(2),#jobs th:nth-child(3),#jobs th:last-child,#jobs td:nth-child(2){text-align:left}
tr.best td{background-color:#eef6ee}
tr.failed td:first-child,tr.interrupted td:first-child{border-left:3px solid #b00020}
td.overrides{text-align:left;font-family:monospace;font-size:12px}td.status-failed{color:#b00020}
td.status-interrupted{color:#b06000}td.status-unknown,td.status-running{color:#777}
td.dir{text-align:left;font-size:11px;color:#777}
#jobs td{white-space:nowrap}
"""
SHOWN = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mIoU", "AP_mask", "AP_box")


def _td(sort_value: Any, text: str, cls: str = "", style: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' style="{style}"' if style else "")
    return f'<td data-v="{html.escape(str(sort_value))}"{attrs}>{html.escape(text)}</td>'


def _metric_cell(value: float | None, top: float) -> str:
    if value is None:
        return _td(-1, "-", "muted")
    width = 100.0 * value / top if top > 0 else 0.0
    return _td(f"{value:.4f}", f"{value:.2f}", "metric", f"--w:{width:.1f}%")


def _eval_at(evaluated: int | None, stopped: int | None) -> str:
    """The iteration the row's metrics come from, and where the run stopped when that is later."""
    if evaluated is None:
        return _td(-1, "-", "muted")
    later = stopped is not None and int(stopped) != int(evaluated)
    return _td(evaluated, f"{evaluated} (run at {stopped})" if later else str(evaluated), "neg" if later else "")


def _row(row: dict, tops: dict[str, float], best: str | None, decimals: int = 2) -> str:
    status = str(row["status"])
    cells = [_td(row["job"], str(row["job"])), _td(status, status_text(row), f"status-{status}"),
             _td(row["params"], row["params"] or "-", "overrides"),
             _td(-1 if row.get("images") is None else row["images"], str(row.get("images") or "-"))]
    cells += [_metric_cell(row.get(name), tops[name]) for name in SHOWN]
    objective = row.get("objective")
    shown = "-" if objective is None else f"{objective:.{decimals}f}"
    # a job without a value sorts after the worst one, in the objective's direction
    worst = 1e30 if row.get("objective_direction") == "minimize" else -1e30
    cells.append(_td(worst if objective is None else objective, shown))
    cells.append(_eval_at(row.get("eval_iteration"), row.get("iteration")))
    wall = row.get("wall_s")
    cells.append(_td(-1 if wall is None else wall, "-" if wall is None else duration(float(wall))))
    cells.append(_td(row.get("config_diff") or "", row.get("config_diff") or "-", "overrides neg"))
    cells.append(_td(row["run_dir"], row["run_dir"], "dir"))
    classes = " ".join(c for c in (status, "best" if row["job"] == best else "") if c)
    tip = " ".join(row["overrides"]) + (f"\nerror: {row['error']}" if row.get("error") else "")
    title = f' title="{html.escape(tip)}"' if tip else ""
    return f'<tr class="{classes}"{title}>{"".join(cells)}</tr>'


def build_page(rows: Sequence[dict], objective: dict | None, *, title: str = "Sweep") -> str:
    """The whole page as a string."""
    assert set(SHOWN) <= set(METRIC_NAMES)
    tops = {name: max([float(r[name]) for r in rows if r.get(name) is not None] + [0.0]) for name in SHOWN}
    best = best_job(rows, objective)
    head = "".join(f'<th class="sortable">{html.escape(h)}</th>'
                   for h in ("job", "status", "params", "images", *SHOWN, "objective", "evaluated at", "wall time",
                                         "other config",
                                         "run folder"))
    body = "".join(_row(r, tops, best, objective_decimals(rows)) for r in rows)
    counts = {s: sum(1 for r in rows if r["status"] == s)
              for s in ("done", "failed", "interrupted", "running", "unknown")}
    common = shared_overrides(rows)
    intro = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs"
    reason = no_best_reason(rows)
    if reason:
        intro += f". No best job: {reason}"
    elif objective and objective.get("name"):
        intro += (f". Objective: {objective['name']} ({objective.get('direction', 'maximize')})"
                  + (f", best job {best}" if best is not None else "")
                  + (f" (tied with job {', '.join(tied_with_best(rows, best))}: the same value)"
                     if tied_with_best(rows, best) else ""))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}{EXTRA_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{len(rows)} job{'s' * (len(rows) != 1)}: {html.escape(intro)}. "
            "Metrics in percent, from each job's eval_results.json, of the iteration in 'evaluated at'; "
            "click a header to sort; hover a row for all its overrides.</p>"
            + ('<p class="neg">config.yaml differs between the jobs outside the overrides that differ: see '
               '"other config"</p>' if any(r.get("config_diff") for r in rows) else "")
            + f'<p class="muted">shared by all jobs: <code>{html.escape(" ".join(common)) or "(none)"}</code></p>'
            f'<table id="jobs" class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            + _notes(rows) + f"<script>{SORT_JS}</script></body></html>\n")


def _notes(rows: Sequence[dict]) -> str:
    """Each failed, running or unknown job's error or note, in full (the row's tooltip has it too)."""
    items = "".join(f"<li>job {html.escape(str(r['job']))} ({html.escape(str(r['status']))}): "
                    f"<code>{html.escape(str(r['error']))}</code></li>" for r in rows if r.get("error"))
    return f'<h2>Notes</h2><ul id="notes">{items}</ul>' if items else ""
