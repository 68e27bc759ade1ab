"""The optional vLLM sampling backend, against a stand-in `vllm` module (vLLM needs a GPU)."""

import sys
import types

import pytest

from seal_lm import vllm_sampler
from seal_lm.arc.domain import ArcDomain
from seal_lm.engine import GenerationConfig
from seal_lm.inner_loop import EvaluatorSpec, SelfEditEvaluator
from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.domain import KnowledgeDomain


class _Out:
    def __init__(self, text):
        self.text, self.token_ids = text, list(range(len(text.split())))


class _Req:
    def __init__(self, text):
        self.outputs = [_Out(text)]


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class StructuredOutputsParams:
        def __init__(self, choice):
            self.choice = choice

    class LLM:
        def __init__(self, model, **kw):
            calls["model"], calls["init"] = model, kw

        def generate(self, prompts, params, use_tqdm=False):
            calls["params"] = params
            ch = params[0].kw.get("structured_outputs")
            return [_Req(ch.choice[p.kw["seed"] % len(ch.choice)] if ch else f"note {p.kw['seed']}") for p in params]

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = StructuredOutputsParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    monkeypatch.setattr(vllm_sampler, "model_path", lambda name: f"/models/{name}")
    return calls


def test_vllm_backend_samples_with_distinct_seeds(fake_vllm):
    passages = load_passages("demo", limit=2)
    ev = SelfEditEvaluator(EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(), n_slots=1, device="cpu"),
                           progress=False)
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, backend="vllm")
    texts, _, n_tok = ev.sample_self_edits(passages, 3, cfg, seed=5)
    assert fake_vllm["model"] == "/models/tiny-random"
    assert len(texts) == 2 and all(len(t) == 3 for t in texts)
    seeds = [p.kw["seed"] for p in fake_vllm["params"]]
    assert len(set(seeds)) == 6  # k copies of a prompt must not share a seed
    assert fake_vllm["params"][0].kw["top_p"] == 0.9 and fake_vllm["params"][0].kw["max_tokens"] == 20
    assert n_tok == 12
    texts2, _, _ = ev.sample_self_edits(passages, 3, cfg, seed=5)
    assert texts2 == texts  # same seed, same samples


def test_vllm_backend_uses_guided_choice_for_constrained_domains(fake_vllm):
    from seal_lm.arc.data import load_kaggle
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "arc"
    tasks = load_kaggle(fix / "tiny_challenges.json", fix / "tiny_solutions.json")
    dom = ArcDomain(recipe_learning_rates=(1e-3,), recipe_epochs=(1,))
    ev = SelfEditEvaluator(EvaluatorSpec(model="tiny-random", domain=dom, n_slots=1, device="cpu"), progress=False)
    texts, _, _ = ev.sample_self_edits(tasks[:1], 2, GenerationConfig(backend="vllm"), seed=0)
    assert all(t in dom.self_edit_choices() for t in texts[0])


def test_unknown_backend_and_missing_vllm(monkeypatch):
    ev = SelfEditEvaluator(EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(), n_slots=1, device="cpu"),
                           progress=False)
    passages = load_passages("demo", limit=1)
    with pytest.raises(ValueError, match="backend"):
        ev.sample_self_edits(passages, 1, GenerationConfig(backend="tgi"), seed=0)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as if vLLM were not installed
    with pytest.raises(RuntimeError, match="pip install vllm"):
        ev.sample_self_edits(passages, 1, GenerationConfig(backend="vllm"), seed=0)
    with pytest.raises(ValueError):
        vllm_sampler.model_path("tiny-random")
