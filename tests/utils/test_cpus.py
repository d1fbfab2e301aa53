"""CPUs a process may use: affinity and the cgroup v2 quota; torch threads capped to them."""

from __future__ import annotations

import torch

from panfpn.engine.job_setup import fit_threads_to_cpus
from panfpn.utils import cpus


def test_cgroup_quota_is_read_and_rounded_up(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs
    assert cpus.cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert cpus.cgroup_cpu_limit(cpu_max) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "absent") is None
    cpu_max.write_text("garbage\n")
    assert cpus.cgroup_cpu_limit(cpu_max) is None


def test_available_cpus_is_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")  # a container limited to 2 of 64 visible CPUs
    assert cpus.available_cpus(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert cpus.available_cpus(cpu_max) == 64


def test_torch_threads_fit_the_cpus_and_torchrun_processes(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        cpu_max = tmp_path / "cpu.max"
        cpu_max.write_text("400000 100000\n")
        monkeypatch.setattr(cpus, "CGROUP_CPU_MAX", cpu_max)
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        torch.set_num_threads(64)  # torch's default in such a container: every visible core
        assert fit_threads_to_cpus() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks share the 4 CPUs
        assert fit_threads_to_cpus() == 2
        torch.set_num_threads(1)
        assert fit_threads_to_cpus() == 1  # never raised
    finally:
        torch.set_num_threads(before)
