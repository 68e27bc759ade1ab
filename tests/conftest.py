import copy
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def _tiny_loaded():
    from seal_lm.models import load_model

    return load_model("tiny-random", device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture
def tiny(_tiny_loaded):
    """A fresh copy of the 2-layer random Llama (tests may wrap/modify it freely)."""
    from seal_lm.models import LoadedModel

    return LoadedModel(model=copy.deepcopy(_tiny_loaded.model), tokenizer=_tiny_loaded.tokenizer, name="tiny-random")


@pytest.fixture(scope="session")
def embedded():
    from seal_lm.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32)


@pytest.fixture
def matches_local_executor(tmp_path):
    """check(make_executor): an executor made by `make_executor(spec)` returns what LocalExecutor returns for
    the same job groups and sampling calls (scores, answers, losses, sampled texts), on the tiny model."""
    from seal_lm.engine import GenerationConfig, TrainConfig
    from seal_lm.executors import LocalExecutor, run_jobs
    from seal_lm.inner_loop import EvaluatorSpec, Job, sample_self_edit_units
    from seal_lm.knowledge.data import load_passages
    from seal_lm.knowledge.domain import KnowledgeDomain
    from seal_lm.lora import LoRAConfig
    from seal_lm.runs import RunDir

    passages = load_passages(FIXTURES / "knowledge" / "tiny_squad.json")
    # fp32 training passes: workers run with fewer torch threads than this process, and bf16 passes on an
    # AMX CPU round with the thread count (measured on this tiny model: final losses 5e-5 apart, relative),
    # which would hide a real routing bug's difference in the same tolerance; fp32 ones agree to ~1e-7.
    spec = EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(answer=GenerationConfig(max_new_tokens=4, temperature=0.0)),
                         lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=2, learning_rate=1e-2, compute_dtype="float32"),
                         n_slots=2, device="cpu", dtype="float32")
    jobs = [Job(f"base/{i}", p, update=False) for i, p in enumerate(passages)]
    # self-edits of different lengths, so the length grouping (inner_loop.group_jobs) really reorders the jobs
    jobs += [Job(f"edit/{i}/{s}", p, "A fact about it.\nAnother fact." + "\nOne more fact." * ((i + s) % 3), seed=s)
             for i, p in enumerate(passages) for s in range(2)]
    gen = GenerationConfig(max_new_tokens=6, batch_size=2)  # one context per sampling call: several calls

    def outputs(ex, name):
        run = RunDir(tmp_path / name, {"x": 1})
        sample_self_edit_units(ex, passages, lambda p: p.passage_id, 2, gen, run, "gen", seed=3)
        single = ex.sample_self_edits(passages[:2], 2, GenerationConfig(max_new_tokens=6), seed=3)[0]
        return run_jobs(ex, jobs, progress=False), {k: u["self_edits"] for k, u in run.units.items()}, single

    def check(make_executor):
        # The reference runs with 1 torch thread, as Ray actors and (given threads=1) worker processes do: on some
        # CPUs fp32 matmuls round differently with 1 and 2 threads (session 10's AVX2-only EPYC), and sampling
        # from a near-uniform tiny random model flips tokens on that — float rounding, not a routing difference.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want, units_want, single_want = outputs(LocalExecutor(spec, progress=False), "local")
        finally:
            torch.set_num_threads(threads)
        ex = make_executor(spec)
        try:
            got, units_got, single_got = outputs(ex, "other")
        finally:
            ex.close()
        assert set(got) == set(want) and len(units_want) == len(passages) > 1
        for key in want:
            assert got[key].score == want[key].score
            assert got[key].details["answers"] == want[key].details["answers"]
            assert got[key].final_loss == pytest.approx(want[key].final_loss, rel=1e-5) if want[key].final_loss else True
        assert units_got == units_want and single_got == single_want

    return check
