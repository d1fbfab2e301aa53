"""predict, export and merge run as one process with their own workers: started by torchrun as
several (WORLD_SIZE > 1) each process did the whole job and wrote the same files (export, merge;
predict already refused it, after checking its config). Now each refuses before doing anything,
naming the launcher, as a config error (tools/merge.py: its message, exit 2)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from panfpn.engine.config import ConfigError
from panfpn.engine.export_run import export_from_config
from panfpn.engine.merge_run import merge_from_config
from panfpn.engine.predict_run import predict_from_config
from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("job, tool", [(predict_from_config, "predict"), (export_from_config, "export"),
                                       (merge_from_config, "merge")])
def test_a_tool_started_as_several_processes_refuses_before_doing_anything(monkeypatch, tmp_path, job, tool):
    monkeypatch.setenv("WORLD_SIZE", "2")
    empty = OmegaConf.create({"output_dir": str(tmp_path)})  # refused before any key is read
    with pytest.raises(ConfigError, match=rf"^tools/{tool}.py runs as one process .* launch it with python, "
                                          r"not torchrun \(WORLD_SIZE=2\)"):
        job(empty)
    assert list(tmp_path.iterdir()) == []


def test_merge_under_torchrun_says_so_and_exits_2(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    done = run([sys.executable, str(ROOT / "tools" / "merge.py"), f"merge.output_dir={tmp_path / 'out'}",
                f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "launch it with python, not torchrun (WORLD_SIZE=2)" in done.stderr
    assert not (tmp_path / "out").exists()
