"""Every engine key is declared once (panfpn/engine/config/schema.py) and its default lives in the
yaml files only: a yaml key without a declaration, a declaration without a yaml key, a default
that fails its own check or type, and a stale docs/config.md all fail here."""

import dataclasses
import types
import typing
from pathlib import Path

import pytest
from config_helpers import CONFIG_DIR, compose_config
from omegaconf import OmegaConf

from panfpn.data.resolvers import LABEL_KEYS
from panfpn.engine.config import doc as config_doc
from panfpn.engine.config.schema import (
    GROUP_SECTIONS, SECTIONS, ExportOptions, PredictOptions, known_keys, options_of,
)

CONFIGS = Path(CONFIG_DIR)
YAML = OmegaConf.load(CONFIGS / "config.yaml")
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))
SOLVERS = sorted(p.stem for p in (CONFIGS / "solver").glob("*.yaml"))
# sections whose defaults configs/config.yaml holds (data: only the derived counts; solver: none)
YAML_SECTIONS = [s for s in SECTIONS if s and s not in GROUP_SECTIONS]


def _required(section: str) -> set[str]:
    return {k for k, opt in options_of(section).items() if not opt.optional}


def test_config_yaml_holds_exactly_the_declared_keys():
    for section in YAML_SECTIONS:
        assert set(YAML[section]) == set(options_of(section)), section
    root = set(YAML) - {"defaults", "hydra"}  # hydra: its own node (callbacks), checked by hydra
    assert root == known_keys("") - {"model", "experiment", "solver"}  # model, solver: from their groups
    assert set(YAML.data) == set(LABEL_KEYS)  # derived from data.metadata; the rest from the data group


@pytest.mark.parametrize("name", DATA)
def test_every_data_config_holds_declared_keys_only(name):
    keys = set(OmegaConf.load(CONFIGS / "data" / f"{name}.yaml")) | set(LABEL_KEYS)
    assert keys <= set(options_of("data")), keys - set(options_of("data"))
    assert _required("data") <= keys, _required("data") - keys


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_config_holds_the_declared_keys(name):
    cfg = compose_config([f"solver={name}"], output_dir="unused")
    assert _required("solver") <= set(cfg.solver) <= set(options_of("solver"))  # optional keys may be absent


def test_the_composed_root_holds_the_declared_keys():
    cfg = compose_config(output_dir="unused")
    assert set(cfg) == known_keys("") - {"experiment"}
    for section in SECTIONS:
        node = cfg if section == "" else cfg[section]
        assert _required(section) <= set(node), (section, _required(section) - set(node))


def _fits(tp, value) -> bool:
    """``value`` is of the declared type ``tp`` (a bool is no int or float; an int is a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(args[0], v) for v in value)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return value is None if tp is type(None) else isinstance(value, tp)


def _assert_defaults_fit(section: str, node) -> None:
    hints = typing.get_type_hints(SECTIONS[section])
    values = OmegaConf.to_container(node, resolve=True)
    for key, opt in options_of(section).items():
        if key not in values or key in ("model", "output_dir") or key in SECTIONS:
            continue
        value = values[key]
        assert _fits(hints[key], value), f"{section}.{key}: default {value!r} is not {hints[key]}"
        assert opt.check is None or opt.check.accepts(value), f"{section}.{key}: {value!r} fails {opt.check.wants}"


@pytest.mark.parametrize("overrides", [[], *[[f"data={d}"] for d in DATA if d != "coco_panoptic_folder"],
                                       *[[f"solver={s}"] for s in SOLVERS]], ids=str)
def test_defaults_pass_their_declared_type_and_check(overrides):
    cfg = compose_config(overrides, output_dir="unused")
    for section in SECTIONS:
        _assert_defaults_fit(section, cfg if section == "" else cfg[section])


def test_the_type_helper_is_strict():
    assert _fits(int | None, None) and _fits(float, 1) and not _fits(int, True) and not _fits(float, "1")
    assert _fits(str | list[str] | None, ["a"]) and not _fits(list[int], [1, "2"])


def test_the_jobs_options_are_the_declared_sections():
    assert SECTIONS["predict"] is PredictOptions and SECTIONS["export"] is ExportOptions
    for cls in (PredictOptions, ExportOptions):
        assert [f.name for f in dataclasses.fields(cls)] == list(options_of(cls.section))


def test_docs_config_md_is_up_to_date(tmp_path):
    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text() == config_doc.render(), "run: python -m panfpn.engine.config.doc"
    assert config_doc.main(["--check", str(doc)]) == 0
    stale = tmp_path / "config.md"
    stale.write_text(doc.read_text().replace("| `train.log_period` |", "| `train.log_periods` |"))
    assert config_doc.main(["--check", str(stale)]) == 1
    assert config_doc.main([str(stale)]) == 0 and stale.read_text() == doc.read_text()
    for section in SECTIONS:
        for key in options_of(section):
            assert f"| `{section + '.' if section else ''}{key}` |" in doc.read_text()
