"""tools/eval.py under torchrun when rank 1 is killed outright (SIGKILL: the out-of-memory killer of
a Slurm node, ``kill -9``): it leaves no ``rank1_error.json``. Rank 0, whose gather then fails
('Connection closed by peer'), says so in one line (panfpn/engine/rank_errors.py ``GONE``) and exits
1, instead of hydra's 'Error executing job' traceback of the closed connection, during which
torchrun's SIGTERM killed it (exit -15, no line). When torchrun's SIGTERM comes first, rank 0
cannot tell it from a stop of its own: ``stopped by SIGTERM`` (143)."""

from __future__ import annotations

import signal

import pytest

from test_eval_rank_stops import BLOCK_ON_RANK_1, _as_rank, _launch, setup  # noqa: F401 - setup: a fixture
from panfpn.engine import rank_errors
from panfpn.utils.stop_signals import EndedElsewhere


def test_rank_0_s_closed_connection_without_any_rank_s_error_says_a_rank_was_killed(tmp_path, monkeypatch):
    _as_rank(monkeypatch, 0)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                        "[127.0.0.1]:36577")
    with pytest.raises(rank_errors.OtherRankFailedError) as told, rank_errors.told_to_rank_0(tmp_path):
        raise gloo
    assert isinstance(told.value, EndedElsewhere) and told.value.signum is None
    assert told.value.summary == f"another rank {rank_errors.GONE}"
    assert told.value.__cause__ is gloo and "Connection closed by peer" in str(told.value)
    # rank 0's own plain RuntimeError (a torch op's) stays its own
    with pytest.raises(RuntimeError, match="shape mismatch") as own, rank_errors.told_to_rank_0(tmp_path):
        raise RuntimeError("shape mismatch")
    assert type(own.value) is RuntimeError


def test_rank_1_killed_by_sigkill_gets_one_line_from_rank_0(tmp_path, setup):  # noqa: F811
    status, err, run = _launch(tmp_path, setup, BLOCK_ON_RANK_1, signal_when_busy=(signal.SIGKILL, False),
                               ready="eval: 3 batches")  # rank 0 past its loop, in the gather
    lines = [line for line in err.splitlines() if line.startswith("tools/eval.py:")]
    assert len(lines) == 1 and "Error executing job" not in err, err[-4000:]
    exit_0 = (tmp_path / "rank0.exit").read_text()
    if exit_0 == "1":  # its gather failed first
        assert lines[0].startswith(f"tools/eval.py: another rank {rank_errors.GONE}; before the metrics were "
                                   "complete: eval_results.json not written (no metrics)"), lines
    else:  # torchrun's SIGTERM came first
        assert exit_0 == "143" and lines[0].startswith("tools/eval.py: stopped by SIGTERM before the metrics"), lines
    assert status != 0 and not (run / "eval_results.json").exists()
