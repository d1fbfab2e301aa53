"""The commands and Python snippets of README.md and docs/*.md fit the code as it is, without running them.

Shell commands come from fenced ``bash`` blocks and from inline code spans that run a script or
module with ``python`` / ``torchrun``; ``\\`` continues a line, ``#`` starts a comment (``# or:
python ...`` is a command too), ``...`` / ``[...]`` / ``<name>`` mark placeholders and optional
parts, ``a|b`` in a value lists alternatives (each is checked). For each command:

- ``tools/{train,eval,predict,export,merge}.py``: the overrides compose with configs/ as the tool
  composes them (a key that does not exist, a group choice without its yaml file: hydra refuses it),
  pass the config schema (:func:`panfpn.engine.config.validate_config`: unknown keys, types, ranges)
  and are not another tool's keys (:func:`panfpn.engine.config.unread.unread_overrides`, the check
  the tools make at start); a sweep's (``-m``) every value is checked; hydra's own flags exist.
  tools/train.py's also pass its start checks and the dry start its sweeps make of each job (model
  on the meta device, labels, weights, solver, data files), a dataset or weights file that cannot
  exist here being no error.
- argparse CLIs (``tools/compare_evals.py``, ``tools/summarize.py``, ``python -m panfpn...``,
  ``panfpn/deploy/onnx_runner.py``, ``bench/*.py``, ``torchrun``'s own flags): the command line parses
  with the program's own parser (flags, required arguments), stopped before it does any work.
- ``make`` targets are in the Makefile, ``pip install`` extras in pyproject.toml, scripts exist
  (and are executable when run as programs), other packages' programs are installed console scripts.

Python snippets (```` ```python ```` blocks): every ``panfpn`` import and ``panfpn.x.y`` attribute
resolves, calls of panfpn functions bind to their signatures (keyword names, argument counts), and
model-zoo builders' yaml overrides exist. Inline code spans that name a ``panfpn.x.y`` object (or
call it), a repository path (``tests/x.py::test_name``) or a module path relative to its package
(``training/run_lock.py``) are checked too, and so are spans naming a config key of the engine's
sections (``eval.compute_ap``, ``data.metadata.use_train_id=true``): some data group or experiment has it.

A command that shows an error on purpose carries the visible marker ``# refused`` in its trailing
comment (docs/experiments.md's refused sweep): the test then checks that it IS refused, with the
files it names missing counting as a refusal.
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib
import importlib.util
import inspect
import json
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from itertools import product
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import open_dict

from config_helpers import compose_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "config.md")]
REFUSED_MARK = "# refused"  # in a command's trailing comment: the command must be refused
HYDRA_TOOLS = ("train", "eval", "predict", "export", "merge")
# scripts the docs run from a copy: docs/deployment.md copies panfpn/deploy/onnx_runner.py to deploy/
COPIES = {"deploy/onnx_runner.py": "panfpn/deploy/onnx_runner.py"}
# programs of other packages the docs run (console scripts of a dependency: they must be installed
# with it; their flags are theirs), and shell commands
FOREIGN = {"csEvalPanopticSemanticLabeling", "csEvalPixelLevelSemanticLabeling", "tensorboard"}
SHELL = {"cp"}
FENCE = re.compile(r"(?ms)^ *```(\w*)\n(.*?)^ *```")
INLINE = re.compile(r"`([^`]+)`")  # a span may wrap lines (not paragraphs)
# a path of another project's repository: "Detectron2's `tools/...`" (the text says whose it is)
ANOTHER_PROJECT = re.compile(r"\b(Detectron2|Mask2Former|panopticapi|torchvision)'s\s*$")


@dataclass
class Command:
    page: str
    line: int
    argv: list[str]
    refused: bool = False  # marked "# refused": it must fail the check
    text: str = ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text.strip()}"


@dataclass
class Snippet:
    page: str
    line: int
    code: str


# ---------------------------------------------------------------- reading the pages


def _fenced(page: Path) -> list[tuple[int, str, str]]:
    """(first line number of the body, language, body) of each fenced block."""
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _code_and_comment(line: str) -> tuple[str, str, str | None]:
    """(code, trailing comment, the quote still open at the end or None): a ``#`` after whitespace
    outside quotes starts the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:], None
    return line, "", quote


def _logical_lines(body: str, first: int) -> list[tuple[int, str, str]]:
    """(line number, code, comment) of each command line: ``\\`` continuations and multi-line
    quoted strings joined; a comment line that holds a command (``# or: python tools/...``) counts
    as that command."""
    out, buf, comments, start, open_quote, commented = [], "", "", first, None, False
    for i, raw in enumerate(body.splitlines()):
        if not buf:
            start = first + i
            stripped = re.sub(r"^#\s*(or:\s*)?", "", raw.strip())
            commented = raw.strip().startswith("#")
            if commented:
                if not re.match(r"(python|torchrun) ", stripped):
                    continue
                raw = stripped
        elif commented:  # the continuation of a commented-out command
            raw = raw.strip().lstrip("#")
        if open_quote:  # inside a quoted string that spans lines: no comment here
            code, comment = raw, ""
            open_quote = None if raw.count(open_quote) % 2 else open_quote
        else:
            code, comment, open_quote = _code_and_comment(raw)
        comments += comment
        if open_quote:
            buf += code + "\n"
        elif code.rstrip().endswith("\\"):
            buf += code.rstrip()[:-1] + " "
        else:
            out.append((start, buf + code, comments))
            buf, comments = "", ""
    return out


def _split(line: str) -> list[str]:
    """Tokens of a shell line (no comment left in it); a ``$(...)`` command substitution is one
    placeholder token."""
    return shlex.split(re.sub(r"\$\([^)]*\)", "placeholder", line), comments=False, posix=True)


def _commands_of_line(page: str, number: int, line: str, comment: str = "") -> list[Command]:
    """The commands of one shell line (``a && b``), without ``VAR=value`` prefixes."""
    commands, current = [], []
    for tok in [*_split(line), "&&"]:
        if tok in ("&&", ";", "||"):
            while current and re.fullmatch(r"[A-Z_]+=\S*", current[0]):  # VAR=value before a command
                current.pop(0)
            if current:
                commands.append(Command(page, number, current, REFUSED_MARK in comment, line))
            current = []
        else:
            current.append(tok)
    return commands


def _without_fences(page: Path) -> str:
    """The page's text with each fenced block blanked (its line count kept)."""
    return re.sub(r"(?ms)^ *```.*?^ *```", lambda m: "\n" * m.group(0).count("\n"), page.read_text())


def inline_spans() -> list[tuple[str, int, str, str]]:
    """(page, line, text, the text just before it) of every inline code span outside fenced blocks."""
    spans = []
    for page in PAGES:
        text = _without_fences(page)
        spans += [(str(page.relative_to(ROOT)), text[:m.start()].count("\n") + 1, " ".join(m.group(1).split()),
                   text[max(0, m.start() - 40):m.start()]) for m in INLINE.finditer(text) if "\n\n" not in m.group(1)]
    return spans


def shell_commands() -> list[Command]:
    """Every shell command of the pages: the lines of fenced ``bash`` / ``sh`` blocks (untyped
    blocks hold output, trees and diagrams), and inline spans that run a script or module with
    ``python`` or ``torchrun``."""
    found: list[Command] = []
    for page in PAGES:
        for first, lang, body in _fenced(page):
            if lang in ("bash", "sh", "shell", "console"):
                for number, line, comment in _logical_lines(body, first):
                    found += _commands_of_line(str(page.relative_to(ROOT)), number, line, comment)
    for page, line, span, _ in inline_spans():
        if re.match(r"(srun )?(python|torchrun) ", span) and re.search(r"\.py\b| -m ", span):
            found += _commands_of_line(page, line, span)
    return found


def python_snippets() -> list[Snippet]:
    """The fenced ``python`` blocks of the pages."""
    return [Snippet(str(page.relative_to(ROOT)), first, body) for page in PAGES
            for first, lang, body in _fenced(page) if lang == "python"]


# ---------------------------------------------------------------- checking one command


def _placeholders_out(argv: list[str]) -> list[str]:
    """``[optional]`` brackets dropped, ``...`` placeholders removed (``RUN_DIR...``: ``RUN_DIR``),
    ``<name>`` placeholders given a value, ``N`` (a count) given 1."""
    out = []
    for tok in argv:
        tok = "1" if tok in ("N", "[N]", "N]") else tok
        tok = re.sub(r"<[\w-]+>", "placeholder", tok)
        if tok.startswith("[") and not tok.startswith("[["):
            tok = tok[1:]
        if tok.endswith("]") and "=[" not in tok and tok.count("[") < tok.count("]"):
            tok = tok[:-1]
        if tok.endswith("=..."):  # key=...: a value to fill in
            tok = tok[:-3] + "placeholder"
        tok = tok[:-3] if tok.endswith("...") and not tok.endswith("/...") else tok
        if tok:
            out.append(tok)
    return out


def _alternatives(overrides: list[str]) -> list[list[str]]:
    """One override list per choice of the ``key=a|b|c`` alternatives the docs write."""
    options = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and "|" in value and not value.startswith(("'", '"')):
            options.append([f"{key}={v}" for v in value.split("|")])
        else:
            options.append([o])
    return [list(c) for c in product(*options)]


def _sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Plain override lists covering each value of each sweep (the others at their first value)."""
    from panfpn.engine.model_spec import parse_overrides

    parsed = parse_overrides(overrides)
    values: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            values.append([o.input_line])
            continue
        sweep = o.value()
        if hasattr(sweep, "start") and hasattr(sweep, "end") and not hasattr(sweep, "step"):  # interval()
            values.append([f"{key}={sweep.start}", f"{key}={sweep.end}"])
        else:
            values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
    variants = [[v[0] for v in values]]
    for i, vals in enumerate(values):
        variants += [[*variants[0][:i], v, *variants[0][i + 1:]] for v in vals[1:]]
    return variants


def _with_data_root(overrides: list[str], root: Path) -> list[str]:
    """``data.root=<anything>`` pointed at a folder holding a minimal COCO-panoptic layout: the
    folder dataset reads its categories from the train JSON when the config is composed."""
    return [f"data.root={root}" if o.startswith("data.root=") else o for o in overrides]


_COMPOSED: dict[tuple[str, ...], Any] = {}


def _composed(overrides: list[str]) -> Any:
    """configs/ composed with ``overrides`` as the tools compose it (hydra's own keys checked, then
    dropped, as a job's config has none); a copy of a config composed before (some pages repeat
    a command)."""
    key = tuple(overrides)
    if key not in _COMPOSED:
        cfg = compose_config(overrides, output_dir="/nonexistent/run_dir", return_hydra_config=True)
        with open_dict(cfg):
            del cfg["hydra"]
        _COMPOSED[key] = cfg
    return copy.deepcopy(_COMPOSED[key])


def check_hydra_tool(tool: str, argv: list[str], ctx: dict) -> None:
    """Raise what tools/<tool>.py would raise at start on this command line's flags and overrides:
    the config checks of every tool; for tools/train.py also its start checks and the dry start a
    sweep makes of each job (:class:`panfpn.engine.training.dry_start.DryStart`: the model on the
    meta device, labels, weights, solver, data files), where a file the command names but that
    cannot exist here (a dataset, downloaded weights) is no error unless ``ctx["refused"]``."""
    from hydra._internal.utils import get_args_parser

    from panfpn.engine.config import validate_config
    from panfpn.engine.config.unread import REFUSED, unread_overrides
    from panfpn.engine.training.dry_start import DryStart
    from panfpn.engine.training.start_checks import check_training_config

    args = get_args_parser().parse_args(argv)  # hydra's flags (-m, --cfg, ...): SystemExit(2) on an unknown one
    overrides = _with_data_root(list(args.overrides), ctx["data_root"])
    dry = ctx.setdefault("dry_start", DryStart())  # one for all commands: each model / solver built once
    for plain in _alternatives(overrides):
        for variant in _sweep_variants(plain) if args.multirun else [plain]:
            cfg = _composed(variant)
            if tool == "train":
                check_training_config(cfg, variant)
                _dry_start(dry, cfg, missing_ok=not ctx.get("refused"))
                continue
            validate_config(cfg)
            if tool in REFUSED:
                refused, _ = unread_overrides(tool, variant, cfg)
                _require(not refused, f"tools/{tool}.py refuses {[line for line, _ in refused]} (another tool's keys)")


def _dry_start(dry: Any, cfg: Any, missing_ok: bool) -> None:
    """``dry.check(cfg)``; with ``missing_ok``, a weights file that cannot exist here is checked
    no further and the rest of the start (solver, data) is checked without it, and a missing data
    file is no error."""
    try:
        dry.check(cfg)
    except FileNotFoundError:
        if not missing_ok:
            raise
        if cfg.weights is None:
            return
        with open_dict(cfg):
            cfg.weights = None
        _dry_start(dry, cfg, missing_ok)


def _require(condition: Any, message: str) -> None:
    """AssertionError(message) unless ``condition`` (a helper's check: the message alone, no
    pytest assertion rewriting)."""
    if not condition:
        raise AssertionError(message)


class _Parsed(Exception):
    """Raised by the patched parse_args once the command line parsed: the program stops there."""


def check_argparse(run: Callable[[list[str]], Any], argv: list[str], monkeypatch) -> argparse.Namespace:
    """Parse ``argv`` with the parser that ``run`` builds, stopping before the program does anything
    else; SystemExit(2) (argparse's error) when a flag or a required argument is wrong."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        run(argv)
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        monkeypatch.undo()
    raise AssertionError("the program returned without parsing a command line")


def _run_script(path: Path) -> Callable[[list[str]], Any]:
    def run(argv: list[str]) -> None:
        saved = sys.argv
        sys.argv = [str(path), *argv]
        sys.path.insert(0, str(path.parent))  # as python does for a script: its folder's modules import
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.argv = saved
            sys.path.remove(str(path.parent))
    return run


def _run_module(name: str) -> Callable[[list[str]], Any]:
    def run(argv: list[str]) -> None:
        saved = sys.argv
        sys.argv = [name, *argv]
        try:
            runpy.run_module(name, run_name="__main__", alter_sys=False)
        finally:
            sys.argv = saved
    return run


def _script(path: str) -> Path:
    real = ROOT / COPIES.get(path, path)
    _require(real.is_file(), f"no file {path} in the repository")
    return real


def _check_python(argv: list[str], ctx: dict) -> None:
    """``python tools/x.py ...``, ``python -m module ...``, ``python bench/x.py ...``."""
    if argv[0] == "-m":
        name = argv[1]
        _require(importlib.util.find_spec(name) is not None, f"no module {name}")
        check_argparse(_run_module(name), argv[2:], ctx["monkeypatch"])
        return
    if argv[0] == "-c":
        return  # inline code of another package (docs/cityscapes.md): not ours to parse
    path, rest = argv[0], argv[1:]
    script = _script(path)
    tool = re.fullmatch(r"tools/(\w+)\.py", path)
    if tool and tool.group(1) in HYDRA_TOOLS:
        check_hydra_tool(tool.group(1), rest, ctx)
        return
    extra = []
    if "--" in rest:  # bench/learn_synthetic.py ... -- <overrides of tools/train.py>
        rest, extra = rest[:rest.index("--")], rest[rest.index("--") + 1:]
    check_argparse(_run_script(script), rest, ctx["monkeypatch"])
    if extra:
        check_hydra_tool("train", extra, ctx)


def _check_torchrun(argv: list[str], ctx: dict) -> None:
    from torch.distributed.run import get_args_parser

    at = next(i for i, t in enumerate(argv) if t.endswith(".py"))
    get_args_parser().parse_args([*argv[:at], argv[at]])  # torchrun's own flags
    _check_python(argv[at:], ctx)


def _check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"(?m)^([\w-]+):", (ROOT / "Makefile").read_text()))
    missing = [t for t in argv if not t.startswith("-") and "=" not in t and t not in targets]
    _require(not missing, f"no make target {missing} in the Makefile")


def _check_pip(argv: list[str]) -> None:
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"(?m)^([\w-]+)\s*=", section))  # (tomllib is Python >= 3.11; the project: >= 3.10)
    for spec in argv[1:]:
        m = re.fullmatch(r"(?:\.|panfpn)\[([\w,]+)\]", spec)
        if m:
            unknown = set(m.group(1).split(",")) - extras
            _require(not unknown, f"no extra {sorted(unknown)} in pyproject.toml (extras: {sorted(extras)})")


def check_command(cmd: Command, ctx: dict) -> None:
    """Raise (AssertionError, SystemExit, a config error) where the command would fail at start."""
    argv = _placeholders_out(cmd.argv)
    program, rest = argv[0], argv[1:]
    if program in ("python", "python3"):
        _check_python(rest, ctx)
    elif program == "srun":  # srun [its flags] python ...: the command it runs
        at = next(i for i, t in enumerate(rest) if not t.startswith("-"))
        check_command(Command(cmd.page, cmd.line, rest[at:], text=cmd.text), ctx)
    elif program == "torchrun":
        _check_torchrun(rest, ctx)
    elif program == "make":
        _check_make(rest)
    elif program == "pip":
        _check_pip(rest)
    elif "/" in program:  # a script run as a program: it must be executable (git mode 100755)
        _require(os.access(_script(program), os.X_OK), f"{program} is not executable")
    elif program in FOREIGN:
        _require(entry_points(group="console_scripts", name=program), f"{program}: no such console script installed")
    else:
        _require(program in SHELL, f"unknown program {program!r} (add it to FOREIGN if it is another package's)")


# ---------------------------------------------------------------- the tests


COMMANDS = shell_commands()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A minimal COCO-panoptic folder (the JSONs only): data=coco_panoptic_folder reads its categories."""
    root = tmp_path_factory.mktemp("data_root")
    categories = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    for split in ("train", "val"):
        (root / "annotations" / f"panoptic_{split}").mkdir(parents=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": categories}))
    return root


@pytest.fixture(scope="module")
def dry_start():
    """The sweeps' dry start, shared by every command: a part's config checked once (its result kept)."""
    from panfpn.engine.training.dry_start import DryStart

    return DryStart()


def test_the_pages_have_commands_and_snippets():
    """The parser finds what the pages show (a parsing regression would make every check vacuous)."""
    assert len(COMMANDS) > 50 and len(python_snippets()) >= 4
    assert any(c.argv[:2] == ["python", "tools/train.py"] for c in COMMANDS)


@pytest.mark.filterwarnings("ignore:'panfpn.:RuntimeWarning")  # runpy of a module the package imported
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c.page}:{c.line}")
def test_command_fits_the_code(cmd, data_root, dry_start, monkeypatch):
    ctx = {"data_root": data_root, "monkeypatch": monkeypatch, "refused": cmd.refused,
           "dry_start": dry_start}
    error: BaseException | None = None
    try:
        check_command(cmd, ctx)
    except (Exception, SystemExit) as err:  # argparse exits 2; config errors and hydra's are exceptions
        error = err
    if cmd.refused:
        assert error is not None, f"{cmd}\nis marked '{REFUSED_MARK}' but the check accepts it"
    elif error is not None:
        pytest.fail(f"{cmd}\nfails: {type(error).__name__}: {error}", pytrace=False)


# -- Python snippets


def _bind_panfpn_names(tree: ast.AST) -> dict[str, Any]:
    """Names the snippet binds to panfpn objects by its imports (an import that fails raises)."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "panfpn":
                    module = importlib.import_module(alias.name)  # import a.b binds a, import a.b as c binds a.b
                    names[alias.asname or "panfpn"] = module if alias.asname else importlib.import_module("panfpn")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "panfpn":
            module = importlib.import_module(node.module)
            for alias in node.names:
                _require(hasattr(module, alias.name), f"from {node.module} import {alias.name}: no such name")
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def _resolve(node: ast.AST, names: dict[str, Any]) -> tuple[bool, Any, str]:
    """(whether ``node`` is a panfpn name or attribute chain, the object, its dotted text)."""
    if isinstance(node, ast.Name):
        return (node.id in names, names.get(node.id), node.id)
    if isinstance(node, ast.Attribute):
        known, obj, text = _resolve(node.value, names)
        if not known:
            return False, None, ""
        _require(hasattr(obj, node.attr), f"{text}.{node.attr} does not exist")
        return True, getattr(obj, node.attr), f"{text}.{node.attr}"
    return False, None, ""


def _check_zoo_overrides(func: Any, call: ast.Call) -> None:
    """A model-zoo builder's (``panfpn.panoptic_fpn_r50(...)``) keyword overrides of its yaml keys,
    when the call's arguments are literals: :func:`panfpn.modeling.zoo.model_config` merges them
    (ValueError naming an unknown key) and builds nothing."""
    from panfpn.modeling import zoo

    name = getattr(func, "__name__", "")
    if getattr(func, "__module__", None) != zoo.__name__ or not (zoo.MODEL_CONFIG_DIR / f"{name}.yaml").is_file():
        return
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        return  # a variable among them: the signature check above is all
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights", "allow_partial")}
    zoo.model_config(name, *args, **kwargs)


def snippet_problems(code: str) -> list[str]:
    """What of ``code``'s panfpn imports, attributes and calls does not fit the package."""
    problems = []
    tree = ast.parse(code)
    try:
        names = _bind_panfpn_names(tree)
    except (ImportError, AssertionError) as err:
        return [str(err)]
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve(node, names)
            elif isinstance(node, ast.Call):
                known, func, text = _resolve(node.func, names)
                if known and callable(func) and not any(isinstance(a, ast.Starred) for a in node.args) \
                        and all(k.arg is not None for k in node.keywords):
                    inspect.signature(func).bind(*node.args, **{k.arg: None for k in node.keywords})
                    _check_zoo_overrides(func, node)
        except (AssertionError, TypeError, ValueError) as err:
            problems.append(f"line {getattr(node, 'lineno', '?')}: {err}")
    return list(dict.fromkeys(problems))  # a call and its attribute report one missing name once


@pytest.mark.parametrize("snippet", python_snippets(), ids=lambda s: f"{s.page}:{s.line}")
def test_python_snippet_fits_the_package(snippet):
    problems = snippet_problems(snippet.code)
    assert not problems, f"{snippet.page}:{snippet.line}: " + "; ".join(problems)


def _find_object(dotted: str) -> tuple[bool, Any]:
    """(whether ``dotted`` (``panfpn.x.y``) names a module or an attribute of its longest module
    prefix, the object)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False, None
            obj = getattr(obj, attr)
        return True, obj
    return False, None


def inline_reference_problem(span: str) -> str | None:
    """What is wrong with an inline ``panfpn.x.y`` or ``panfpn.x.y(arg, key=...)`` span: a name that
    does not exist, arguments its signature does not take (``...`` among them: not checked)."""
    call = re.fullmatch(r"(panfpn(?:\.\w+)+)\((.*)\)", span)
    dotted = call.group(1) if call else span
    found, obj = _find_object(dotted)
    if not found:
        return f"{dotted} does not exist"
    if call and call.group(2).strip() and "..." not in call.group(2):
        node = ast.parse(span, mode="eval").body
        try:
            inspect.signature(obj).bind(*node.args, **{k.arg: None for k in node.keywords})
        except TypeError as err:
            return f"{span}: {err}"
    return None


PACKAGE_MODULES = sorted((ROOT / "panfpn").rglob("*.py"))


def test_inline_references_exist():
    """Inline spans naming ``panfpn.x.y`` (or calling it) resolve and bind; spans naming a
    repository path name a file (``tests/x.py::name``: a function of that file); a module path
    relative to its package (``training/run_lock.py``, docs/architecture.md's way) names a module
    of panfpn/ (another project's file is preceded by its name: "Detectron2's `tools/...`")."""
    broken = []
    for page, line, span, context in inline_spans():
        if re.fullmatch(r"panfpn(\.\w+)+(\(.*\))?", span):
            problem = inline_reference_problem(span)
            if problem:
                broken.append(f"{page}:{line}: {problem}")
        elif re.fullmatch(r"(panfpn|tools|bench|configs|tests|docs)/[\w./-]+(::\w+)?", span) and "*" not in span:
            path, _, name = span.partition("::")
            if not (ROOT / path.rstrip("/")).exists():
                if not ANOTHER_PROJECT.search(context):
                    broken.append(f"{page}:{line}: {span} (no such path)")
            elif name and not re.search(rf"(?m)^\s*(async )?def {name}\b|^class {name}\b", (ROOT / path).read_text()):
                broken.append(f"{page}:{line}: {span} (no {name} in {path})")
        elif re.fullmatch(r"\w+(/\w+)*/\w+\.py", span) and not ANOTHER_PROJECT.search(context):
            # a module named relative to its package (`training/run_lock.py`, `engine/eval_run.py`)
            if not any(str(p.relative_to(ROOT)).endswith("/" + span) for p in PACKAGE_MODULES):
                broken.append(f"{page}:{line}: {span} (no such module under panfpn/)")
    assert not broken, "inline references that do not exist:\n" + "\n".join(broken)


# an inline span that is a config key of the engine's sections, alone or as an override (`key=value`,
# `+key=...`, `~key`); a key of another project's config says whose it is ("official `train.ddp...`")
CONFIG_KEY_SPAN = re.compile(r"[+~]{0,2}((?:train|eval|predict|export|merge|data|solver)\.[A-Za-z_]\w*(?:\.\w+)*)(=\S*)?")
FILE_NAME = re.compile(r"\.(py|log|lock|json|jsonl|onnx|pt2|yaml|txt|md|html)$")  # train.log, eval.py: files
OFFICIAL = re.compile(r"\bofficial\s*$")
MISSPELT = re.compile(r"\bmisspelt\b[^`]*$")  # "a misspelt key (`solver.max_itr=3`": wrong on purpose


def _flat_keys(node: Any, prefix: str, out: set[str]) -> None:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.add(f"{prefix}{k}")
        _flat_keys(v, f"{prefix}{k}.", out)


def config_keys() -> set[str]:
    """Every key (dotted, list items by index) of the root config composed with each data group and
    each experiment, the model group left out (its keys are the model's, checked by the commands)."""
    from omegaconf import OmegaConf

    keys: set[str] = set()
    choices = [[]] + [[f"{group}={p.stem}", "data.root=/x"] for group in ("data", "experiment")
                      for p in sorted((ROOT / "configs" / group).glob("*.yaml"))]
    for overrides in choices:
        tree = OmegaConf.to_container(compose_config(overrides, output_dir="/tmp/x"), resolve=False)
        tree.pop("model", None)
        _flat_keys(tree, "", keys)
    return keys


def test_inline_config_keys_exist():
    """Inline spans naming a config key (`eval.compute_ap`, `data.metadata.use_train_id=true`) name a key
    that some data group or experiment composes: only the fenced and tool commands were checked, so a
    renamed key stayed in the prose."""
    keys = config_keys()
    unknown = []
    for page, line, span, context in inline_spans():
        m = CONFIG_KEY_SPAN.fullmatch(span.strip("'\""))
        if m and not FILE_NAME.search(m.group(1)) and not OFFICIAL.search(context) \
                and not ANOTHER_PROJECT.search(context) and not MISSPELT.search(context) \
                and m.group(1) not in keys:
            unknown.append(f"{page}:{line}: {span}")
    assert not unknown, "config keys in the docs that no config has:\n" + "\n".join(unknown)
