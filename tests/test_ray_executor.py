"""The Ray executor gives the same results as the local one (local Ray instance started here)."""

import pytest

pytest.importorskip("ray")

from seal_lm.engine import GenerationConfig, TrainConfig
from seal_lm.executors import LocalExecutor, RayExecutor, run_jobs
from seal_lm.inner_loop import EvaluatorSpec, Job, sample_self_edit_units
from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.domain import KnowledgeDomain
from seal_lm.lora import LoRAConfig
from seal_lm.runs import RunDir

pytestmark = pytest.mark.ray


def test_ray_matches_local(tmp_path):
    import ray
    from pathlib import Path

    passages = load_passages(Path(__file__).parent / "fixtures" / "knowledge" / "tiny_squad.json")
    spec = EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(answer=GenerationConfig(max_new_tokens=4, temperature=0.0)),
                         lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=2, learning_rate=1e-2),
                         n_slots=2, device="cpu", dtype="float32")
    jobs = [Job(f"base/{i}", p, update=False) for i, p in enumerate(passages)]
    jobs += [Job(f"edit/{i}/{s}", p, "A fact about it.\nAnother fact.", seed=s) for i, p in enumerate(passages) for s in range(2)]
    def sample(ex, name):  # one context per sampling call, so the calls are spread over the actors
        run = RunDir(tmp_path / name, {"x": 1})
        sample_self_edit_units(ex, passages, lambda p: p.passage_id, 2, GenerationConfig(max_new_tokens=6, batch_size=2),
                               run, "gen", seed=3)
        return {k: u["self_edits"] for k, u in run.units.items()}

    local = LocalExecutor(spec, progress=False)
    want = run_jobs(local, jobs, progress=False)
    texts_local = local.sample_self_edits(passages[:2], 2, GenerationConfig(max_new_tokens=6), seed=3)[0]
    units_local = sample(local, "local")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        remote = RayExecutor(spec, n_actors=2, progress=False)
        got = run_jobs(remote, jobs, progress=False)
        texts_ray = remote.sample_self_edits(passages[:2], 2, GenerationConfig(max_new_tokens=6), seed=3)[0]
        units_ray = sample(remote, "ray")
        remote.close()
    finally:
        ray.shutdown()
    assert set(got) == set(want)
    for key in want:
        assert got[key].score == want[key].score
        assert got[key].details["answers"] == want[key].details["answers"]
        assert got[key].final_loss == pytest.approx(want[key].final_loss, rel=1e-5) if want[key].final_loss else True
    assert texts_ray == texts_local
    assert units_ray == units_local and len(units_local) == len(passages)
