"""Engine._decode (in-place KV cache, finished rows leave the batch, CDF sampling) vs HF generate."""

import pytest
import torch

from seal_lm.engine import Engine, GenerationConfig, _pick_tokens

PROMPTS = ["The river", "Seven bridges cross the river of the old town of Brask, and", "A", "Once upon a time in"]


# hf_greedy, engine_greedy and random_adapters also serve benchmarks/device_check.py (on a GPU): keep them device-aware

def hf_greedy(eng, prompts, max_new, adapters):
    enc = eng.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(eng.device)
    with eng.lora.use(torch.tensor(adapters)):
        gen = eng.model.generate(**enc, max_new_tokens=max_new, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=eng.tokenizer.pad_token_id,
                                 eos_token_id=sorted(eng.end_token_ids))
    out = []
    for row in gen[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eng.end_token_ids), len(row))
        out.append(row[:cut])
    return out


def engine_greedy(eng, prompts, max_new, adapters):
    enc = eng.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(eng.device)
    return eng._decode(enc["input_ids"], enc["attention_mask"], torch.tensor(adapters),
                       GenerationConfig(max_new_tokens=max_new, temperature=0.0), eng.end_token_ids)


def random_adapters(eng):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in eng.lora.modules:
            b = m.lora_B[: eng.n_slots]
            b.copy_((torch.randn(b.shape, generator=g) * 0.05).to(b.device, b.dtype))


def test_greedy_decode_equals_hf_generate_with_rows_finishing_early(tiny):
    eng = Engine(tiny, n_slots=2)
    random_adapters(eng)
    # make one token an end token that greedy decoding actually emits, so rows finish at different steps
    first = hf_greedy(eng, PROMPTS, 12, [0, 1, 2, 0])
    eos_pick = first[1][3]
    eng.model.generation_config.eos_token_id = eos_pick
    expected = hf_greedy(eng, PROMPTS, 12, [0, 1, 2, 0])
    lengths = sorted(len(x) for x in expected)
    assert lengths[0] < 12 and lengths[-1] == 12, lengths  # some rows end early, others run to the limit
    got = engine_greedy(eng, PROMPTS, 12, [0, 1, 2, 0])
    assert got == expected


def test_pick_tokens_draws_from_the_nucleus_with_the_right_frequencies():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = torch.softmax(logits, -1)[0]
    torch.manual_seed(0)
    n = 40_000
    draws = _pick_tokens(logits.expand(n, -1), temperature=1.0, top_p=0.8)
    counts = torch.bincount(draws, minlength=6).float() / n
    # probs .561 .206 .125 .076 ...: the mass before token 3 is .892 >= 0.8, so tokens 0-2 (as HF's top-p)
    keep = probs[:3] / probs[:3].sum()
    assert counts[3:].sum() == 0
    assert torch.allclose(counts[:3], keep, atol=0.01), (counts, keep)
    full = _pick_tokens(logits.expand(n, -1), temperature=2.0, top_p=1.0)
    want = torch.softmax(logits / 2.0, -1)[0]
    assert torch.allclose(torch.bincount(full, minlength=6).float() / n, want, atol=0.01)
    assert torch.equal(_pick_tokens(logits, temperature=0.0, top_p=0.5), torch.tensor([0]))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decode_respects_a_constraint(tiny, temperature):
    eng = Engine(tiny, n_slots=1)
    options = ["alpha beta", "gamma", "alpha delta"]
    trie = eng.constraint(options)
    texts, _ = eng.generate(["Pick:", "Choose one:", "x"], GenerationConfig(max_new_tokens=8, temperature=temperature),
                            constraint=trie, seed=3)
    assert all(t in options for t in texts), texts


def test_greedy_decode_equals_hf_generate_with_rows_grouped_by_adapter(tiny):
    """generate() sorts rows by adapter, so decoding takes the per-adapter slice path (and compacts it)."""
    eng = Engine(tiny, n_slots=2)
    random_adapters(eng)
    adapters = [0, 0, 1, 2]
    first = hf_greedy(eng, PROMPTS, 10, adapters)
    eng.model.generation_config.eos_token_id = first[0][2]
    expected = hf_greedy(eng, PROMPTS, 10, adapters)
    got = engine_greedy(eng, PROMPTS, 10, adapters)
    assert got == expected


def test_repeated_prompts_share_one_prefill_and_decode_as_hf_generate(tiny):
    """The k samples of one context are the same prompt: its prefill runs once and its KV cache is copied."""
    eng = Engine(tiny, n_slots=3)
    random_adapters(eng)
    prompts = [PROMPTS[1], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    adapters = [0, 0, 1, 2, 1, 1]  # distinct (prompt, adapter) pairs: 4 of 6 rows
    first = hf_greedy(eng, prompts, 10, adapters)
    eng.model.generation_config.eos_token_id = first[2][3]  # rows end at different steps
    expected = hf_greedy(eng, prompts, 10, adapters)
    batch_sizes = []
    hook = eng.model.get_input_embeddings().register_forward_hook(lambda m, i, o: batch_sizes.append(o.shape[0]))
    try:
        got = engine_greedy(eng, prompts, 10, adapters)
    finally:
        hook.remove()
    assert got == expected
    assert batch_sizes[0] == 4 and batch_sizes[1] == 6, batch_sizes
    # sampled: the copies draw their own tokens, and a rerun with the same seed draws the same ones
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0)
    texts, _ = eng.generate([PROMPTS[1]] * 4, cfg, seed=5)
    assert len(set(texts)) > 1, texts
    assert eng.generate([PROMPTS[1]] * 4, cfg, seed=5)[0] == texts


def test_append_layer_grows_its_buffer_and_selects_rows():
    from seal_lm.engine import _AppendLayer

    layer = _AppendLayer(spare=0)  # no spare room: every update reallocates and copies the old contents
    chunks = [torch.randn(3, 2, n, 4) for n in (5, 1, 1)]
    for c in chunks:
        k, v = layer.update(c, -c)
    want = torch.cat(chunks, dim=2)
    assert torch.equal(k, want) and torch.equal(v, -want) and layer.get_seq_length() == 7
    layer.batch_select_indices(torch.tensor([2, 0]))
    k, v = layer.update(torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))
    assert torch.equal(k[:, :, :7], want[[2, 0]]) and torch.equal(k[:, :, 7], torch.ones(2, 2, 4))


def test_bf16_model_on_cpu_masks_left_padding(tiny):
    """A bf16 model on a CPU uses the engine's fp32-training attention; its masks must still be built."""
    import copy

    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    from seal_lm.models import LoadedModel

    eng = Engine(LoadedModel(model=model, tokenizer=tiny.tokenizer, name="tiny-bf16"), n_slots=1)
    assert model.config._attn_implementation == "seal_cpu_sdpa"
    enc = eng.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"][0].min() == 0  # the short prompt is left-padded
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), eng.lora.use(eng.base_slot):
        padded = model(**enc, position_ids=pos).logits[0, -1].float()
        alone = model(**eng.tokenizer(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)).logits[0, -1].float()
    torch.testing.assert_close(padded, alone, atol=3e-2, rtol=3e-2)


def test_greedy_decode_applies_the_models_repetition_penalty_as_hf_generate(tiny):
    """A generation_config's repetition_penalty (Qwen2.5-Instruct sets 1.05) changes greedy output; the
    engine's decoder must apply it exactly as HF generate does, rows finishing early and compaction included."""
    eng = Engine(tiny, n_slots=2)
    random_adapters(eng)
    adapters = [0, 1, 2, 0]
    plain = hf_greedy(eng, PROMPTS, 14, adapters)
    eng.model.generation_config.repetition_penalty = 3.0
    penalised = hf_greedy(eng, PROMPTS, 14, adapters)
    assert penalised != plain  # the penalty matters for this model and these prompts
    eng.model.generation_config.eos_token_id = penalised[2][4]  # some rows end early: compaction is exercised
    expected = hf_greedy(eng, PROMPTS, 14, adapters)
    assert sorted(len(x) for x in expected)[0] < 14
    got = engine_greedy(eng, PROMPTS, 14, adapters)
    assert got == expected


def test_decode_warns_about_generation_settings_it_does_not_apply(tiny):
    import seal_lm.engine as E

    eng = Engine(tiny, n_slots=1)
    eng.model.generation_config.no_repeat_ngram_size = 3
    E._warned_generation.discard("no_repeat_ngram_size")
    with pytest.warns(UserWarning, match="no_repeat_ngram_size"):
        eng.generate(["hello"], GenerationConfig(max_new_tokens=2, temperature=0.0))
