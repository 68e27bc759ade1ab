"""The processes executor (worker processes on this machine) gives the same results as the local one."""

import pytest

from seal_lm.executors import ProcessExecutor, make_executor
from seal_lm.inner_loop import EvaluatorSpec


def test_processes_match_local(matches_local_executor):
    matches_local_executor(lambda spec: make_executor(spec, "processes", workers=2, progress=False))


def test_processes_executor_rejects_bad_worker_counts():
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(EvaluatorSpec(model="tiny-random", domain=None), workers=0)
    with pytest.raises(ValueError, match="processes"):
        make_executor(EvaluatorSpec(model="tiny-random", domain=None), "threads")
