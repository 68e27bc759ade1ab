"""Training passes and decoding in bf16 on a twin of the fp32 base weights, sharing the fp32 adapters."""

import pytest
import torch

from seal_lm import engine as E
from seal_lm.engine import Engine, TrainConfig, TrainPlan, resolve_compute_dtype

PLANS = [TrainPlan([("Q: where?", " In the town of Brask."), ("", "Brask has seven bridges.")], seed=1),
         TrainPlan([("", "The river runs under all of them.")], seed=2)]


def test_auto_picks_bf16_only_for_fp32_on_a_bf16_capable_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: True)
    assert resolve_compute_dtype("auto", torch.float32, cpu) == torch.bfloat16
    assert resolve_compute_dtype("auto", torch.bfloat16, cpu) == torch.bfloat16
    assert resolve_compute_dtype("auto", torch.float32, cuda) == torch.float32
    assert resolve_compute_dtype("float32", torch.float32, cpu) == torch.float32
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: False)
    assert resolve_compute_dtype("auto", torch.float32, cpu) == torch.float32
    assert resolve_compute_dtype("bf16", torch.float32, cpu) == torch.bfloat16
    try:
        resolve_compute_dtype("int8", torch.float32, cpu)
    except ValueError as e:
        assert "compute_dtype" in str(e)
    else:
        raise AssertionError("a bad compute_dtype must be refused")
    with pytest.raises(ValueError, match="compute_dtype"):  # refused when the config is built, before a run starts
        TrainConfig(compute_dtype="float16")


def test_bf16_twin_trains_the_shared_fp32_adapters(tiny):
    import copy

    cfg = dict(learning_rate=1e-2, epochs=3, batch_size=2)
    fp32 = Engine(copy.deepcopy(tiny), n_slots=2)
    ref = fp32.train(PLANS, TrainConfig(**cfg, compute_dtype="float32"), progress=False)
    assert not fp32._train_models  # no twin when the compute dtype is the model's

    mixed = Engine(tiny, n_slots=2)
    got = mixed.train(PLANS, TrainConfig(**cfg, compute_dtype="bfloat16"), progress=False)
    twin = mixed.compute_model("bfloat16")
    assert twin is not mixed.model and next(twin.parameters()).dtype == torch.bfloat16
    assert next(mixed.model.parameters()).dtype == torch.float32  # the decoding model is untouched
    for (_, m), (_, t) in zip(mixed.lora.modules, mixed.lora.mirrors[0].items()):
        assert t.lora_A is m.lora_A and t.lora_B is m.lora_B and m.lora_A.dtype == torch.float32
    # the same optimisation, in bf16 arithmetic: losses agree to bf16 precision, adapters moved alike
    for k in range(2):
        torch.testing.assert_close(torch.tensor(got.losses[k]), torch.tensor(ref.losses[k]), rtol=2e-2, atol=2e-2)
        a, b = mixed.lora.adapter_state(k), fp32.lora.adapter_state(k)
        moved = [n for n in a if "lora_B" in n]
        cos = torch.nn.functional.cosine_similarity(torch.cat([a[n].flatten() for n in moved]),
                                                    torch.cat([b[n].flatten() for n in moved]), dim=0)
        assert cos > 0.95, cos
    # the fp32 model sees the trained adapters (shared parameters, no copy back)
    ids = torch.tensor([[3, 7, 11, 19]])
    with torch.no_grad():
        with mixed.lora.use(0):
            adapted = mixed.model(input_ids=ids).logits
        with mixed.lora.use(mixed.base_slot):
            base = mixed.model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-3


def test_merge_and_restore_keep_the_twin_in_step(tiny):
    eng = Engine(tiny, n_slots=1)
    eng.train(PLANS[:1], TrainConfig(learning_rate=1e-2, epochs=2, compute_dtype="bfloat16"), progress=False)
    twin = eng.lora.mirrors[0]
    saved = {name: m.base.weight.detach().clone() for name, m in eng.lora.modules}
    eng.lora.merge_into_base(0)
    for name, m in eng.lora.modules:
        assert torch.equal(twin[name].base.weight, m.base.weight.to(torch.bfloat16))
    assert any(not torch.equal(saved[n], m.base.weight) for n, m in eng.lora.modules)
    eng.lora.load_base_weights(saved)
    for name, m in eng.lora.modules:
        assert torch.equal(m.base.weight, saved[name])
        assert torch.equal(twin[name].base.weight, saved[name].to(torch.bfloat16))


def test_generate_decodes_in_its_compute_dtype(tiny):
    """generation.compute_dtype=bfloat16 on an fp32 model decodes on the bf16 twin (sharing the adapters): the
    same tokens as the model cast to bf16 with the same adapters, and the fp32 model itself never runs."""
    import copy

    from seal_lm.engine import GenerationConfig
    from seal_lm.models import LoadedModel
    from test_decode import PROMPTS, random_adapters

    with pytest.raises(ValueError, match="compute_dtype"):
        GenerationConfig(compute_dtype="float16")
    fp32 = Engine(copy.deepcopy(tiny), n_slots=2)
    bf16 = Engine(LoadedModel(model=copy.deepcopy(tiny.model).to(torch.bfloat16), tokenizer=tiny.tokenizer,
                              name=tiny.name), n_slots=2)
    for eng in (fp32, bf16):
        random_adapters(eng)
    adapters = [0, 1, None, 0]
    assert fp32.compute_model("bfloat16") is not fp32.model  # made before the hook below, which a copy would copy
    calls = []
    fp32.model.get_input_embeddings().register_forward_hook(lambda m, i, o: calls.append(o.dtype))

    def greedy(eng, dtype):
        cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, compute_dtype=dtype)
        return eng.generate(PROMPTS, cfg, adapters=adapters)[0]

    want = greedy(bf16, "auto")  # a bf16 model decodes in its own dtype
    got = greedy(fp32, "bfloat16")
    assert got == want and not calls
    greedy(fp32, "float32")
    assert calls and set(calls) == {torch.float32}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_answers_decode_in_the_runs_generation_dtype(tmp_path, dtype):
    """A run's answers (knowledge and ARC) follow its generation.compute_dtype, like its self-edit sampling."""
    from seal_lm.arc.arc_config import ArcEvalConfig
    from seal_lm.arc.experiments import make_domain
    from seal_lm.engine import GenerationConfig
    from seal_lm.knowledge.domain import KnowledgeDomain
    from seal_lm.knowledge.eval_config import KnowledgeEvalConfig

    kcfg = KnowledgeEvalConfig(generation=GenerationConfig(compute_dtype=dtype))
    assert KnowledgeDomain.from_config(kcfg, tmp_path).answer.compute_dtype == dtype
    acfg = ArcEvalConfig(generation=GenerationConfig(compute_dtype=dtype))
    assert make_domain(acfg).answer_compute_dtype == dtype
