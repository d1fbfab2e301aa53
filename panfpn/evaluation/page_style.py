"""The CSS and the table-sorting JavaScript the HTML pages share (report.html, compare.html, a
sweep's summary.html); torch-free, so that tools/summarize.py's page needs no torch."""

from __future__ import annotations

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}
th.sortable{cursor:pointer;background:#f4f4f8}th.sortable:hover{background:#e4e4f0}
.neg{color:#b00020}.pos{color:#1b7f3a}.muted{color:#777}
#worst{display:flex;flex-wrap:wrap;gap:8px 24px}figure{margin:8px 0}
figure img{min-width:360px;max-width:100%;border:1px solid #ccc;image-rendering:pixelated}
figure figcaption,figure .legend,figure ul.errors{width:0;min-width:100%;box-sizing:border-box;overflow-wrap:anywhere}
ul.errors{font-size:13px;margin:4px 0}
.wide{overflow-x:auto;max-width:100%}
#runs td:nth-child(2),#runs th:nth-child(2){text-align:left}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th.sortable').forEach(function(th,i){th.addEventListener('click',function(){
  var b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
  var col=th.cellIndex;rows.sort(function(x,y){var u=x.cells[col].dataset.v,v=y.cells[col].dataset.v;
   var d=isNaN(u)?u.localeCompare(v):parseFloat(u)-parseFloat(v);return asc?d:-d;});
  rows.forEach(function(r){b.appendChild(r);});});});});
"""
