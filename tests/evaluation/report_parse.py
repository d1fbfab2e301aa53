"""Structure of a report page read with html.parser: tables by id, their header and body rows,
svg bars, images and every attribute value (for the no-network check)."""

from __future__ import annotations

from html.parser import HTMLParser


class PageStructure(HTMLParser):
    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.svg_bars: list[dict] = []  # rects of class "bar" inside an <svg>
        self.svg_bar_titles: list[dict] = []  # the same, with "title": the bar's tooltip text
        self._in_title = False
        self.images: list[dict] = []
        self.attr_values: list[str] = []
        self.scripts: list[str] = []
        self._table: str | None = None
        self._section = ""
        self._row: list | None = None
        self._in_svg = 0
        self._in_script = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attr_values += [v for v in a.values() if v]
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = {"class": a.get("class", ""), "head": [], "rows": []}
        elif tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table]["head" if self._section == "thead" else "rows"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append({"attrs": a, "text": ""})
        elif tag == "svg":
            self._in_svg += 1
        elif tag == "rect" and self._in_svg and "bar" in a.get("class", ""):
            self.svg_bars.append(a)
            self.svg_bar_titles.append(dict(a, title=""))
        elif tag == "title" and self._in_svg:
            self._in_title = True
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self._in_script = True
            if "src" in a:
                self.scripts.append("src=" + a["src"])
        elif tag == "link":
            self.scripts.append("link=" + a.get("href", ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None
        elif tag == "svg":
            self._in_svg -= 1
        elif tag == "script":
            self._in_script = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title and self.svg_bar_titles:
            self.svg_bar_titles[-1]["title"] += data
        if self._row is not None and self._row:
            self._row[-1]["text"] += data
        if self._in_script:
            self.scripts.append(data)

    def texts(self, table: str) -> list[list[str]]:
        return [[c["text"].strip() for c in row] for row in self.tables[table]["rows"]]
