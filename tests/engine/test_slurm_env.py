"""Slurm -> torchrun variables, and the submitit launcher config composing."""

import pytest
from config_helpers import compose_config

from panfpn.engine.slurm_env import apply_slurm_env, expand_nodelist, tasks_on_node, torchrun_env_from_slurm

SRUN_TASK = {  # task 5 of a 2-node x 4-task step, as srun sets them
    "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "8",
}


def test_expand_nodelist():
    assert expand_nodelist("gpu[01-03,7],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu7", "cpu5"]
    assert expand_nodelist("node12") == ["node12"]
    assert expand_nodelist("r[1-2]n[08-09]") == ["r1n08", "r1n09", "r2n08", "r2n09"]
    assert expand_nodelist("a-1,b[9-10]") == ["a-1", "b9", "b10"]


def test_tasks_on_node():
    assert [tasks_on_node("2(x3),1", i) for i in range(4)] == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="node id 4"):
        tasks_on_node("2(x3),1", 4)


def test_srun_task_maps_to_torchrun_variables():
    env = torchrun_env_from_slurm(SRUN_TASK)
    assert env == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                   "MASTER_PORT": str(20000 + 123456 % 40000), "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    # every task of the job agrees on the rendezvous
    other = torchrun_env_from_slurm(SRUN_TASK | {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"})
    assert (other["MASTER_ADDR"], other["MASTER_PORT"]) == (env["MASTER_ADDR"], env["MASTER_PORT"])
    assert torchrun_env_from_slurm(SRUN_TASK | {"MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"


def test_sbatch_script_and_torchrun_are_left_alone():
    batch_script = {k: v for k, v in SRUN_TASK.items() if not k.startswith("SLURM_STEP")}
    assert torchrun_env_from_slurm(batch_script) == {}  # one process: must not wait for 8 ranks
    env = dict(SRUN_TASK, RANK="3", WORLD_SIZE="16")  # srun torchrun ...: torchrun's values win
    assert apply_slurm_env(env) == {} and env["RANK"] == "3" and env["WORLD_SIZE"] == "16"
    env = dict(SRUN_TASK)
    assert apply_slurm_env(env)["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"


def test_missing_step_variable_is_named():
    with pytest.raises(ValueError, match="SLURM_LOCALID"):
        torchrun_env_from_slurm({k: v for k, v in SRUN_TASK.items() if k != "SLURM_LOCALID"})


def _compose_hydra(overrides):
    return compose_config(overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher (the 'slurm' extra) is not installed")
    from hydra.errors import ConfigCompositionException as HydraCompositionError

    cfg = _compose_hydra(["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                          "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.max_num_timeout == 0
    with pytest.raises(HydraCompositionError, match="nodez"):  # the plugin's schema checks keys
        _compose_hydra(["hydra/launcher=slurm", "hydra.launcher.nodez=2"])


_RANK_SCRIPT = """
import torch, torch.distributed as dist
from panfpn.engine.slurm_env import apply_slurm_env
from panfpn.engine.distributed import init_distributed
apply_slurm_env()
init_distributed("cpu")
t = torch.tensor([dist.get_rank() + 1])
dist.all_reduce(t)
print(dist.get_rank(), dist.get_world_size(), int(t))
dist.destroy_process_group()
"""


def test_two_srun_tasks_form_a_process_group():
    """Two processes with only srun's variables (no torchrun) join one gloo group."""
    import os
    import subprocess
    import sys
    from contextlib import ExitStack

    from process_helpers import started

    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE",
                                                                       "LOCAL_RANK", "MASTER_"))}
    with ExitStack() as stack:  # both ranks killed (process groups) when the test ends, pass or fail
        procs = []
        for rank in range(2):
            env = base | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                          "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost",
                          "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_ID": str(os.getpid()),
                          "OMP_NUM_THREADS": "1"}
            procs.append(stack.enter_context(started([sys.executable, "-c", _RANK_SCRIPT], env=env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(o.split() for o, _ in outs) == [["0", "2", "3"], ["1", "2", "3"]]
