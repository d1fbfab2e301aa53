"""The wheel users get from ``pip install``: it builds without deprecation warnings, carries the
configs the model zoo reads, and works installed outside the source tree (not editable)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the built wheel, the build's output) from a copy of the sources (the build writes build/
    and egg-info next to pyproject.toml: not into the checkout under test)."""
    version = _setuptools_version()
    if version is None or version < (77, 0):
        pytest.skip(f"needs setuptools >= 77 in this environment to build without isolation (has {version})")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("panfpn", "configs"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-v", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("panfpn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], proc.stdout + proc.stderr


def test_wheel_builds_without_deprecation_warnings(wheel: tuple[Path, str]) -> None:
    # setuptools turns its deprecations (e.g. a TOML-table license) into errors at a set date
    _, log = wheel
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "SetuptoolsWarning"):
        assert warning not in log, log[-3000:]


def test_wheel_carries_configs_and_license(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    shipped = {n for n in names if n.startswith("panfpn/configs/")}
    expected = {"panfpn/configs/" + str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= shipped, sorted(expected - shipped)
    assert "panfpn/data/coco_panoptic_categories.json" in names
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_builds_a_zoo_model(wheel: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = wheel
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(path)], check=True, capture_output=True, timeout=300)
    code = ("import panfpn, panfpn.modeling.zoo as zoo; "
            "m = zoo.build_named_model('panoptic_fpn_small', 3, 2); "
            "print(panfpn.__file__, type(m).__name__, zoo.model_config('panoptic_fpn_r50').model.backbone.depth)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    file_line, model, depth = proc.stdout.split()
    assert Path(file_line).is_relative_to(target)  # the installed copy, not the checkout
    assert (model, depth) == ("PanopticFPN", "50")
