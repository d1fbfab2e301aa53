"""Every relative link (and image) in README.md and docs/*.md names a file of the repository, and an anchor
names a heading of that file (the README points into docs/, so a moved or renamed page shows here)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # links and images


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    body = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {github_anchor(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", body)}


def links(page: Path) -> list[str]:
    body = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return [t for t in LINK.findall(body) if not re.match(r"[a-z]+://|mailto:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = {Path(t.partition("#")[0]).name for t in links(ROOT / "README.md") if t.startswith("docs/")}
    missing = [p.name for p in PAGES[1:] if p.name not in readme]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_built_in_evaluator_is_in_the_evaluation_pages_table():
    """A name of eval.evaluators (build.NAMED) missing from evaluation.md's table of evaluators went
    unnoticed (cityscapes_sem_seg was not there)."""
    from panfpn.evaluation.build import NAMED

    text = (ROOT / "docs" / "evaluation.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| each entry of `eval.evaluators` |"))
    missing = [name for name, target in NAMED.items()
               if f"`{name}` (`{target.rsplit('.', 1)[1]}`, `{target.split('.')[-2]}.py`)" not in row]
    assert not missing, f"docs/evaluation.md's evaluator table lacks {missing}"


def test_architecture_module_map_names_every_module():
    """docs/architecture.md's module map has one row per folder of panfpn/ naming exactly its modules:
    the page listed none of 60 modules added over the sessions (engine/stop_messages.py,
    evaluation/image_set.py, ...), so a reader could not find where they live."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"(?m)^\| `(panfpn/[\w/]*)/` \| (.*) \|$", text))
    folders = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "panfpn").rglob("*.py") if p.name != "__init__.py"}
    problems = [f"no row for {f}/" for f in sorted(folders - set(rows))]
    problems += [f"row {f}/: no such folder" for f in sorted(set(rows) - folders)]
    for folder in sorted(folders & set(rows)):
        modules = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        named = set(re.findall(r"`(\w+\.py)`", rows[folder]))
        problems += [f"{folder}/: {m} not named" for m in sorted(modules - named)]
        problems += [f"{folder}/: {m} named but absent" for m in sorted(named - modules)]
    assert not problems, "docs/architecture.md module map: " + "; ".join(problems)
