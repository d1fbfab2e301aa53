"""report.html's sections beyond the metrics: the run's context, the wrong-class confusion and the
browser over every image (paged, lowest per-image PQ first, file names, overlay legend).

The browser's data is one inline JSON block; its overlays are JPEG files in ``report_images/``
beside the page (see :mod:`panfpn.evaluation.report_collector`), loaded only for the page shown.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

BROWSE_PAGE = 24  # images per page of the browser
CONFUSION_MAX = 20  # most frequent ground-truth / predicted categories shown in the confusion table

STYLE = """
#context td{text-align:left}#context{font-size:13px}
td.thing{color:#3b6fb6}td.stuff{color:#8a6d1f}
#confusion td.hit{background:#fde2e2}
#browse-nav button{margin:0 6px}#browse{display:flex;flex-wrap:wrap;gap:8px 24px}
.legend span{display:inline-block;margin:2px 8px 2px 0;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:3px;border:1px solid #999;vertical-align:middle}
"""

BROWSE_JS = """
(function(){var el=document.getElementById('browse-data');if(!el)return;
 var items=JSON.parse(el.textContent),per=%d,page=0,box=document.getElementById('browse'),
  info=document.getElementById('browse-page');
 items.sort(function(a,b){var x=a.pq===null?2:a.pq,y=b.pq===null?2:b.pq;return x-y;});
 function add(parent,tag,text){var e=document.createElement(tag);if(text)e.textContent=text;parent.appendChild(e);return e;}
 function show(){var n=Math.max(1,Math.ceil(items.length/per));page=Math.min(Math.max(page,0),n-1);
  info.textContent='page '+(page+1)+' of '+n;box.innerHTML='';
  items.slice(page*per,(page+1)*per).forEach(function(it){var f=add(box,'figure');
   add(f,'figcaption',it.file+' (image '+it.id+'): '+(it.pq===null?'no segments':'PQ '+(100*it.pq).toFixed(2)));
   var im=add(f,'img');im.loading='lazy';im.alt=it.file;im.src=it.img;
   var lg=add(f,'div');lg.className='legend';
   it.legend.forEach(function(l){var s=add(lg,'span');add(s,'i').style.background=l[1];add(s,'b',l[0]).style.fontWeight='normal';});});}
 document.getElementById('browse-prev').onclick=function(){page--;show();};
 document.getElementById('browse-next').onclick=function(){page++;show();};show();})();
""" % BROWSE_PAGE


@dataclass
class ReportExtras:
    """What the report collector adds to the page: ``context`` ``{label: text}``, ``counts``
    ``{category id: [predicted, ground truth, dropped]}``, ``confusion`` ``{(GT category, predicted
    category): count}``, ``images`` (one browser entry per image) and ``kinds`` (thing / stuff)."""

    context: Mapping[str, str] = field(default_factory=dict)
    counts: Mapping[int, Sequence[int]] = field(default_factory=dict)
    confusion: Mapping[tuple[int, int], int] = field(default_factory=dict)
    images: Sequence[Mapping[str, Any]] = field(default_factory=list)
    kinds: dict[int, str] = field(default_factory=dict)


def _name(names: Mapping[int, str], cat: Any) -> str:
    return names.get(int(cat), f"category {cat}")


def context_table(context: Mapping[str, str]) -> str:
    """The run's context, one row per item, at the top of the page."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    return f'<table id="context"><tbody>{rows}</tbody></table>' if rows else ""


def confusion_table(confusion: Mapping[tuple[int, int], int], names: Mapping[int, str]) -> str:
    """Ground-truth category (rows) x predicted category (columns): how often a prediction of the
    column's category overlapped a segment of the row's with IoU > 0.5 (a match but for its class)."""
    if not confusion:
        return '<p class="muted">no wrong-class matches</p>'
    by_gt: dict[int, int] = {}
    by_pred: dict[int, int] = {}
    for (g, p), n in confusion.items():
        by_gt[g] = by_gt.get(g, 0) + n
        by_pred[p] = by_pred.get(p, 0) + n
    rows = sorted(by_gt, key=lambda c: (-by_gt[c], c))[:CONFUSION_MAX]
    cols = sorted(by_pred, key=lambda c: (-by_pred[c], c))[:CONFUSION_MAX]
    head = "<th>GT \\ predicted</th>" + "".join(f"<th>{html.escape(_name(names, c))}</th>" for c in cols)
    body = []
    for g in rows:
        cells = "".join(f'<td class="hit">{confusion[(g, p)]}</td>' if confusion.get((g, p)) else "<td></td>"
                        for p in cols)
        body.append(f'<tr data-category="{g}"><td>{html.escape(_name(names, g))}</td>{cells}</tr>')
    return f'<table id="confusion"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def browse_section(images: Sequence[Mapping[str, Any]]) -> str:
    """Every image, paged (:data:`BROWSE_PAGE` a page), lowest per-image PQ first, with its file name,
    PQ, overlay (ground truth | prediction) and the legend of the categories it shows."""
    if not images:
        return '<p class="muted">no images (eval.report_browse=false)</p>'
    data = json.dumps(list(images)).replace("</", "<\\/")
    return ('<p id="browse-nav"><button id="browse-prev">previous</button><span id="browse-page"></span>'
            '<button id="browse-next">next</button></p><div id="browse"></div>'
            f'<script type="application/json" id="browse-data">{data}</script><script>{BROWSE_JS}</script>')


__all__ = ["BROWSE_PAGE", "ReportExtras", "browse_section", "confusion_table", "context_table"]
