"""report.html's and compare.html's JavaScript run in a headless browser: the image browser pages
through every image lowest PQ first, the compare page's columns sort on a click.

A script appended to the page clicks like a user and records what the page shows after each click
in a ``<pre id="states">`` (JSON), read back from the browser's ``--dump-dom``.
"""

from __future__ import annotations

import html
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from panfpn.evaluation.compare_page import build_compare, make_runs
from panfpn.evaluation.report import build_report
from panfpn.evaluation.report_sections import BROWSE_PAGE, ReportExtras

from fake_results import fake_metrics
from process_helpers import run as run_in_group


def _browser() -> str | None:
    names = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "chrome")
    return next((p for p in map(shutil.which, names) if p), None)


pytestmark = pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium/google-chrome) "
                                                           "installed to run the pages' scripts")

NAMES = {1: "person", 2: "car", 7: "road", 9: "sky", 11: "bus"}


def _states_after(page: str, actions: str, tmp_path: Path) -> list:
    """Run ``actions`` (JavaScript that calls ``record()`` after each step) on ``page`` in the
    browser; the recorded states."""
    script = (f"<script>var STATES=[];function record(){{STATES.push(snapshot());}}{actions}"
              "var pre=document.createElement('pre');pre.id='states';pre.textContent=JSON.stringify(STATES);"
              "document.body.appendChild(pre);</script></body>")
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", script), encoding="utf-8")
    dom = run_in_group([_browser(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
                        "--dump-dom", path.as_uri()], check=True, timeout=60, capture_output=True, text=True).stdout
    found = re.search(r'<pre id="states">(.*?)</pre>', dom, re.S)
    assert found, "the injected script did not run (page script error?)"
    return json.loads(html.unescape(found.group(1)))


BROWSE_SNAPSHOT = """function snapshot(){return {page:document.getElementById('browse-page').textContent,
 captions:Array.from(document.querySelectorAll('#browse figcaption')).map(function(c){return c.textContent;}),
 images:Array.from(document.querySelectorAll('#browse img')).map(function(i){return i.getAttribute('src');})};}"""


def _captions(images: list[dict]) -> list[str]:
    """What the browser writes above each image."""
    return [f"{im['file']} (image {im['id']}): " + ("no segments" if im["pq"] is None else f"PQ {100 * im['pq']:.2f}")
            for im in images]


def test_the_image_browser_pages_through_every_image_lowest_pq_first(tmp_path):
    n = BROWSE_PAGE + 7
    pqs = [round(0.03 * i, 2) for i in range(n - 2)] + [None, None]  # two images with no segments: last
    random.Random(0).shuffle(pqs)  # the page gets the images in dataset order, not sorted
    images = [{"id": str(i), "file": f"img_{i:03d}.jpg", "pq": pq, "img": f"report_images/{i:03d}.jpg",
               "legend": [["car", "#3b6fb6"]]} for i, pq in enumerate(pqs)]
    page = build_report(fake_metrics({1: 0.8, 2: 0.1}), NAMES, extras=ReportExtras(images=images))
    clicks = ("var nx=document.getElementById('browse-next'),pv=document.getElementById('browse-prev');"
              "record();nx.click();record();nx.click();record();pv.click();record();pv.click();record();")
    first, second, past_end, back, before_start = _states_after(page, BROWSE_SNAPSHOT + clicks, tmp_path)

    by_pq = sorted(images, key=lambda im: (im["pq"] is None, im["pq"] or 0.0))
    assert first["page"] == "page 1 of 2" and first["captions"] == _captions(by_pq[:BROWSE_PAGE])
    assert first["images"] == [im["img"] for im in by_pq[:BROWSE_PAGE]]  # only this page's overlays load
    assert second["page"] == "page 2 of 2" and second["captions"] == _captions(by_pq[BROWSE_PAGE:])
    assert all(c.endswith("no segments") for c in second["captions"][-2:])
    assert past_end == second and back == first and before_start == first  # "next" / "previous" stop at the ends


COMPARE_SNAPSHOT = """function snapshot(){return Array.from(document.querySelectorAll('#per-class tbody tr')).map(
 function(r){return [r.cells[0].textContent, r.cells[2].dataset.v];});}"""


def test_clicking_a_compare_header_sorts_its_column_both_ways(tmp_path):
    a = fake_metrics({1: 0.8, 2: 0.1, 7: 0.55, 9: 0.9, 11: None})
    b = fake_metrics({1: 0.6, 2: 0.3, 7: 0.56, 9: 0.2, 11: None})
    c = fake_metrics({1: 0.7, 2: 0.2, 7: 0.5, 9: 0.95, 11: 0.1})
    page = build_compare(make_runs([a, b, c], ["a.json", "b.json", "c.json"]), NAMES)
    clicks = ("var th=document.querySelectorAll('#per-class thead th');"
              "record();th[2].click();record();th[2].click();record();th[0].click();record();")
    initial, up, down, by_name = _states_after(page, COMPARE_SNAPSHOT + clicks, tmp_path)

    assert [r[0] for r in initial] == ["sky", "person", "road", "car", "bus"]  # ΔPQ of B, largest loss first
    assert [r[0] for r in up] == ["bus", "sky", "car", "road", "person"]  # PQ B ascending, n/a first
    assert [float(v) for _, v in up] == sorted(float(v) for _, v in initial)
    assert [r[0] for r in down] == ["person", "road", "car", "sky", "bus"]
    assert [r[0] for r in by_name] == sorted(NAMES.values())  # text columns sort by name


FIGURE_SNAPSHOT = """function snapshot(){return Array.from(document.querySelectorAll('figure')).map(function(f){
 return [f.parentNode.id, f.getBoundingClientRect().width, f.querySelector('img').getBoundingClientRect().width];});}"""


def test_long_legends_and_file_names_wrap_under_their_image(tmp_path):
    """A figure is as wide as its overlay: a long legend, file name or error list wraps beneath it
    instead of widening the figure (which left gaps in the browser's grid)."""
    legend = [[f"category number {i}", "#3b6fb6"] for i in range(14)]
    images = [{"id": str(i), "file": f"{'frankfurt_000000_0002' * 3}_{i}_leftImg8bit.png", "pq": 0.1 * i,
               "img": f"report_images/{i}.jpg", "legend": legend[: 2 + 4 * i]} for i in range(4)]
    page = build_report(fake_metrics({1: 0.8, 2: 0.1}), NAMES, extras=ReportExtras(images=images))
    figures = _states_after(page, FIGURE_SNAPSHOT + "record();", tmp_path)[0]
    assert [parent for parent, _, _ in figures] == ["browse"] * 4
    assert all(abs(figure - img) < 1 for _, figure, img in figures), figures


WIDTH_SNAPSHOT = """function snapshot(){return {page:document.documentElement.scrollWidth, window:window.innerWidth,
 boxes:Array.from(document.querySelectorAll('.wide')).map(function(b){return [b.firstChild.id, b.scrollWidth > b.clientWidth];})};}"""


def test_wide_tables_scroll_in_their_box_not_the_page(tmp_path):
    """Many runs (7 columns each) or many long category names: the table scrolls sideways in its
    box and the page stays as wide as the window (the browser's default 800 px)."""
    names = {i: f"long category name {i}" for i in range(1, 21)}
    runs = [fake_metrics({c: 0.02 * c + 0.01 * k for c in names}) for k in range(5)]
    compare = build_compare(make_runs(runs, [f"/runs/experiment_{k}/eval/eval_results.json" for k in range(5)]), names)
    confusion = {(g, p): 1 for g in names for p in names if g != p}
    report = build_report(runs[0], names, extras=ReportExtras(confusion=confusion, kinds={c: "thing" for c in names}))
    for page in (compare, report):
        state = _states_after(page, WIDTH_SNAPSHOT + "record();", tmp_path)[0]
        assert state["page"] <= state["window"], state
        assert any(scrolls for _, scrolls in state["boxes"]), state  # the wide table is there, scrolled in its box
