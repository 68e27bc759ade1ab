"""The Ray executor gives the same results as the local one (local Ray instance started here)."""

import pytest

pytest.importorskip("ray")

from seal_lm.executors import RayExecutor

pytestmark = pytest.mark.ray


def test_ray_matches_local(matches_local_executor):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        matches_local_executor(lambda spec: RayExecutor(spec, n_actors=2, progress=False))
    finally:
        ray.shutdown()
