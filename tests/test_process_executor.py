"""The processes executor (worker processes on this machine) gives the same results as the local one."""

from pathlib import Path

import pytest

from seal_lm.engine import GenerationConfig, TrainConfig
from seal_lm.executors import LocalExecutor, ProcessExecutor, make_executor, run_jobs
from seal_lm.inner_loop import EvaluatorSpec, Job, sample_self_edit_units
from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.domain import KnowledgeDomain
from seal_lm.lora import LoRAConfig
from seal_lm.runs import RunDir


def test_processes_match_local(tmp_path):
    passages = load_passages(Path(__file__).parent / "fixtures" / "knowledge" / "tiny_squad.json")
    spec = EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(answer=GenerationConfig(max_new_tokens=4, temperature=0.0)),
                         lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=2, learning_rate=1e-2),
                         n_slots=2, device="cpu", dtype="float32")
    jobs = [Job(f"base/{i}", p, update=False) for i, p in enumerate(passages)]
    jobs += [Job(f"edit/{i}/{s}", p, "A fact about it.\nAnother fact.", seed=s) for i, p in enumerate(passages) for s in range(2)]
    gen = GenerationConfig(max_new_tokens=6, batch_size=2)  # one context per sampling call: several calls

    def sample(ex, name):
        run = RunDir(tmp_path / name, {"x": 1})
        sample_self_edit_units(ex, passages, lambda p: p.passage_id, 2, gen, run, "gen", seed=3)
        return {k: u["self_edits"] for k, u in run.units.items()}

    local = LocalExecutor(spec, progress=False)
    want, texts_local = run_jobs(local, jobs, progress=False), sample(local, "local")
    procs = make_executor(spec, "processes", workers=2, progress=False)
    assert isinstance(procs, ProcessExecutor)
    try:
        got, texts_procs = run_jobs(procs, jobs, progress=False), sample(procs, "procs")
    finally:
        procs.close()
    assert set(got) == set(want) and len(texts_local) == len(passages) > 1
    for key in want:
        assert got[key].score == want[key].score
        assert got[key].details["answers"] == want[key].details["answers"]
        assert got[key].final_loss == pytest.approx(want[key].final_loss, rel=1e-5) if want[key].final_loss else True
    assert texts_procs == texts_local


def test_processes_executor_rejects_bad_worker_counts():
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(EvaluatorSpec(model="tiny-random", domain=None), workers=0)
    with pytest.raises(ValueError, match="processes"):
        make_executor(EvaluatorSpec(model="tiny-random", domain=None), "threads")
