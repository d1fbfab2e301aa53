"""tools/merge.py on the CPU starts without torch, and with merge.output_dir given composes its
config once, without hydra's run directory; its output is the @hydra.main run's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from merge_helpers import write_tiny_merge_inputs

ROOT = Path(__file__).resolve().parents[2]
# Runs the tool as `python tools/merge.py ARGS` does, then says whether torch got imported.
RUN = ("import runpy, sys; sys.argv = ['tools/merge.py'] + sys.argv[1:]; "
       f"runpy.run_path({str(ROOT / 'tools' / 'merge.py')!r}, run_name='__main__'); "
       "print('TORCH_IMPORTED', 'torch' in sys.modules)")


def _inputs(root: Path) -> list[str]:
    return [*write_tiny_merge_inputs(root, (1, 2), shift_masks=True), "merge.workers=0", "device=cpu",
            "merge.stuff_area=0"]


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", RUN, *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cpu_merge_never_imports_torch_and_composes_once(tmp_path):
    args = _inputs(tmp_path)
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    (fast / "cwd").mkdir(parents=True)
    (slow / "cwd").mkdir(parents=True)
    out = _run(args + [f"merge.output_dir={fast / 'out'}"], fast / "cwd")
    assert "TORCH_IMPORTED False" in out
    assert not any((fast / "cwd").iterdir())  # no hydra run directory
    out = _run(args + [f"merge.output_dir={slow / 'out'}", f"hydra.run.dir={slow / 'run'}"], slow / "cwd")
    assert "TORCH_IMPORTED False" in out and (slow / "run" / ".hydra").is_dir()  # through @hydra.main
    for name in ("panoptic_merged.json", "panoptic_merged/000000000001.png", "panoptic_merged/000000000002.png",
                 "merge_rules.json", "merge_skipped.json"):
        assert (fast / "out" / name).read_bytes() == (slow / "out" / name).read_bytes(), name
    assert len(json.loads((fast / "out" / "panoptic_merged.json").read_text())["annotations"]) == 2


PLAIN_CASES = [
    [],
    ["merge.output_dir=/tmp/out dir", "device=cpu", "merge.rules=detectron2"],
    ["merge.score_thresh=0.3", "merge.overlap_thresh=null", "merge.stuff_area=1024", "merge.workers=0"],
    ["merge.overlap_thresh=none", "merge.overwrite=true", "merge.progress_bar=false", "device='cuda:1'"],
    ["merge.semantic_json='a b,c.json'", "merge.threads=3"],
]


def _composed(argv: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=argv)


@pytest.mark.parametrize("argv", PLAIN_CASES)
def test_config_yaml_alone_gives_the_composed_merge_config(argv):
    # The fast path reads config.yaml alone: what the merge job reads (merge.*, device) must equal
    # the full compose's, defaults (every default group file) and overrides included.
    from omegaconf import OmegaConf

    from panfpn.engine.merge_tool.plain_config import plain_merge_config

    plain, full = plain_merge_config(ROOT / "configs", argv), _composed(argv)
    assert plain is not None
    for key in ("merge", "device"):
        assert OmegaConf.to_container(plain, resolve=True)[key] == \
            OmegaConf.to_container(OmegaConf.create({key: full[key]}), resolve=True)[key], key


@pytest.mark.parametrize("argv", [
    ["seed=1"], ["model=panoptic_fpn_r50"], ["+merge.extra=1"], ["~merge.threads"], ["++merge.threads=1"],
    ["merge.workers=1,2"], ["merge.score_thres=0.3"], ["hydra.run.dir=x"], ["merge=null"],
    ["merge.rules=[unclosed"],
])
def test_anything_else_needs_the_full_compose(argv):
    from panfpn.engine.merge_tool.plain_config import plain_merge_config

    assert plain_merge_config(ROOT / "configs", argv) is None
