"""tools/merge.py's output: non-finite scores skip their image like NaN (strict JSON out), and an
output folder that holds files is refused unless merge.overwrite replaces an earlier merge's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from panfpn.engine.config import ConfigError
from tests.engine.test_merge_tool import _inputs, _outputs, _run


def _strict(path: Path):
    """Parse as a strict JSON reader does (no NaN / Infinity literals)."""
    def refuse(literal):
        raise ValueError(f"{path}: non-standard JSON literal {literal}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("score", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_a_non_finite_score_skips_its_image(compose_cfg, tmp_path, score):
    _inputs(tmp_path)
    results = json.loads((tmp_path / "instances.json").read_text())
    next(r for r in results if r["image_id"] == 101)["score"] = score
    (tmp_path / "instances.json").write_text(json.dumps(results))  # Python writes Infinity / NaN
    summary = _run(compose_cfg, tmp_path, tmp_path / "out", "merge.workers=0")
    assert "image 101: instance result 0 has no finite numeric score" in summary["skipped"]["101"]
    merged = _strict(tmp_path / "out" / "panoptic_merged.json")
    assert [a["image_id"] for a in merged["annotations"]] == [100]
    _strict(tmp_path / "out" / "merge_skipped.json")
    _strict(tmp_path / "out" / "merge_rules.json")


def test_a_rerun_into_an_earlier_output_is_refused(compose_cfg, tmp_path):
    _inputs(tmp_path)
    out = tmp_path / "out"
    _run(compose_cfg, tmp_path, out, "merge.workers=0")
    before = _outputs(out)
    with pytest.raises(ConfigError, match=rf"merge.output_dir {out} holds the output of an earlier merge.*"
                                          r"merge.overwrite=true"):
        _run(compose_cfg, tmp_path, out, "merge.workers=0")
    assert _outputs(out) == before


def test_overwrite_replaces_the_earlier_merge_and_keeps_hydras_files(compose_cfg, tmp_path):
    _inputs(tmp_path)
    out = tmp_path / "out"
    _run(compose_cfg, tmp_path, out, "merge.workers=0")
    assert len(list((out / "panoptic_merged").iterdir())) == 2
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("x: 1\n")
    (out / "merge.log").write_text("log\n")
    (out / "panoptic_merged" / ".0000000999.png.abc123.tmp").write_bytes(b"killed write")
    data = json.loads((tmp_path / "images.json").read_text())
    data["images"] = [i for i in data["images"] if i["id"] != 100]  # fewer images this time
    (tmp_path / "images.json").write_text(json.dumps(data))
    summary = _run(compose_cfg, tmp_path, out, "merge.workers=0", "merge.overwrite=true")
    merged, skipped, pngs = _outputs(out)
    assert summary["merged"] == 1 and [a["image_id"] for a in merged["annotations"]] == [101]
    assert sorted(pngs) == [a["file_name"] for a in merged["annotations"]]  # no PNG of image 100 left
    assert "not in" in skipped["100"]  # its results are still in instances.json
    assert (out / ".hydra" / "config.yaml").read_text() == "x: 1\n" and (out / "merge.log").is_file()


@pytest.mark.parametrize("where", ["top", "png_folder"])
def test_files_the_merge_did_not_write_are_never_deleted(compose_cfg, tmp_path, where):
    _inputs(tmp_path)
    out = tmp_path / "out"
    _run(compose_cfg, tmp_path, out, "merge.workers=0")
    other = out / "notes.txt" if where == "top" else out / "panoptic_merged" / "notes.txt"
    other.write_text("mine")
    before = _outputs(out)
    name = "notes.txt" if where == "top" else "panoptic_merged"
    with pytest.raises(ConfigError, match=rf"merge.output_dir {out} holds files tools/merge.py did not "
                                          rf"write \({name}\)"):
        _run(compose_cfg, tmp_path, out, "merge.workers=0", "merge.overwrite=true")
    assert other.read_text() == "mine"
    if where == "top":
        assert _outputs(out) == before


def test_an_empty_or_hydra_only_folder_is_used(compose_cfg, tmp_path):
    _inputs(tmp_path)
    out = tmp_path / "out"
    (out / ".hydra").mkdir(parents=True)
    (out / "merge.log").write_text("")
    assert _run(compose_cfg, tmp_path, out, "merge.workers=0")["merged"] == 2
