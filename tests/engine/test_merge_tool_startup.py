"""tools/merge.py on the CPU starts without torch, and with merge.output_dir given composes its
config once, without hydra's run directory; its output is the @hydra.main run's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[2]
# Runs the tool as `python tools/merge.py ARGS` does, then says whether torch got imported.
RUN = ("import runpy, sys; sys.argv = ['tools/merge.py'] + sys.argv[1:]; "
       f"runpy.run_path({str(ROOT / 'tools' / 'merge.py')!r}, run_name='__main__'); "
       "print('TORCH_IMPORTED', 'torch' in sys.modules)")


def _inputs(root: Path) -> list[str]:
    cats = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    images = [{"id": k, "file_name": f"{k}.jpg", "height": 6, "width": 8} for k in (1, 2)]
    (root / "sem").mkdir()
    results = []
    for k in (1, 2):
        Image.fromarray(np.full((6, 8), 2, np.uint8)).save(root / "sem" / f"{k}.png")
        mask = np.zeros((6, 8), np.uint8)
        mask[1:4, k:k + 4] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        results.append({"image_id": k, "category_id": 1, "score": 0.9,
                        "segmentation": {"size": [6, 8], "counts": rle["counts"].decode()}})
    (root / "images.json").write_text(json.dumps({"images": images, "categories": cats}))
    (root / "instances.json").write_text(json.dumps(results))
    return [f"merge.semantic_dir={root / 'sem'}", f"merge.instances_json={root / 'instances.json'}",
            f"merge.images_json={root / 'images.json'}", "merge.workers=0", "device=cpu",
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
