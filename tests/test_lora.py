"""Batched multi-adapter LoRA: equal to one-by-one training, equal to peft, and resettable."""

import copy
import dataclasses

import pytest
import torch

from seal_lm.engine import Engine, GenerationConfig, TrainConfig, TrainPlan
from seal_lm.lora import LoRAConfig

PLANS = [
    TrainPlan([("", "The Varnholt Bridge was finished in 1874."), ("", "Oda Pellinen built it."),
               ("Q: who? A:", " Oda Pellinen")], seed=11),
    TrainPlan([("", "Selka river runs north."), ("", "It freezes every winter in the valley of Tarn.")],
              seed=22, learning_rate=3e-3, epochs=2),
    TrainPlan([("", "A single long line about the fictional town of Brask and its seven towers of stone.")],
              seed=33, epochs=4),
]
CFG = TrainConfig(learning_rate=1e-3, epochs=3, batch_size=2, grad_clip=1.0, lr_schedule="linear")


def _logits(engine, text="The bridge was built by", adapter=None):
    ids = engine.tokenizer(text, return_tensors="pt")
    with engine.lora.use(adapter):
        return engine.model(**ids).logits


def test_batched_training_equals_one_by_one(tiny):
    import copy

    # A float64 base (its passes run in float64; adapters stay fp32): this checks the batching logic, which
    # fp32 or bf16 summation order would blur differently on every CPU (Adam turns ~0 gradients into steps).
    tiny.model.to(torch.float64)
    engine = Engine(copy.deepcopy(tiny), n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    batched = engine.train(PLANS, CFG, progress=False)
    batched_state = [engine.lora.adapter_state(k) for k in range(3)]

    single = Engine(tiny, n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    for k, plan in enumerate(PLANS):
        stats = single.train([plan], CFG, progress=False)
        torch.testing.assert_close(torch.tensor(stats.losses[0]), torch.tensor(batched.losses[k]),
                                   rtol=1e-4, atol=1e-5)
        state = single.lora.adapter_state(0)
        for name, t in state.items():
            torch.testing.assert_close(t, batched_state[k][name], rtol=1e-5, atol=2e-6)
    # Different plans really trained differently (the test would pass trivially otherwise).
    assert len(batched.losses[0]) == 3 * 2 and len(batched.losses[1]) == 2 and len(batched.losses[2]) == 4
    assert batched.losses[2][-1] < batched.losses[2][0]


def test_training_reduces_loss_and_reset_restores_base_exactly(tiny):
    engine = Engine(tiny, n_slots=2, lora=LoRAConfig(r=4, alpha=8))
    before = _logits(engine).clone()
    plan = TrainPlan([("", "The bridge was built by Oda Pellinen in 1874.")], seed=1, epochs=20)
    stats = engine.train([plan], TrainConfig(learning_rate=5e-3), progress=False)
    # a random 2-layer model with frozen tiny embeddings cannot go far below ln(vocab); a clear drop suffices
    assert stats.losses[0][-1] < stats.losses[0][0] - 0.5
    adapted = _logits(engine, adapter=0)
    assert not torch.allclose(adapted, before)
    assert torch.equal(_logits(engine), before)  # no adapter selected: the base path is untouched
    engine.lora.reset()
    assert torch.equal(_logits(engine, adapter=0), before)  # B = 0 after reset: bit-identical
    assert torch.equal(_logits(engine, adapter=engine.base_slot), before)


def test_matches_peft_forward(tiny):
    """Our adapter in peft's layout gives the same outputs as peft's own LoRA implementation."""
    import copy

    from peft import LoraConfig, get_peft_model

    engine = Engine(copy.deepcopy(tiny), n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    engine.train([TrainPlan([("", "some text to learn from, twice over")], seed=3, epochs=3)],
                 TrainConfig(learning_rate=1e-2), progress=False)
    ours = _logits(engine, adapter=0)
    peft_model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(
        r=4, lora_alpha=8, target_modules=list(engine.lora.cfg.target_modules), lora_dropout=0.0))
    state = {k.replace(".weight", ".default.weight"): v for k, v in engine.lora.adapter_state(0).items()}
    missing = peft_model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    ids = engine.tokenizer("The bridge was built by", return_tensors="pt")
    torch.testing.assert_close(peft_model(**ids).logits, ours, rtol=1e-4, atol=1e-4)


def test_generate_mixes_adapted_and_base_rows(tiny):
    engine = Engine(tiny, n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    engine.train([TrainPlan([("", "zebra zebra zebra zebra")], seed=0, epochs=30)],
                 TrainConfig(learning_rate=2e-2), progress=False)
    cfg = GenerationConfig(max_new_tokens=4, temperature=0.0, batch_size=4)
    base_only, _ = engine.generate(["hello there", "hello there"], cfg)
    mixed, n = engine.generate(["hello there", "hello there"], cfg, adapters=[None, 0])
    assert mixed[0] == base_only[0]
    assert mixed[1] != base_only[1]
    assert n > 0


def test_merge_into_base_keeps_function(tiny):
    engine = Engine(tiny, n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    engine.train([TrainPlan([("", "merge me into the base weights")], seed=5, epochs=5)],
                 TrainConfig(learning_rate=1e-2), progress=False)
    adapted = _logits(engine, adapter=0)
    engine.lora.merge_into_base(0)
    torch.testing.assert_close(_logits(engine), adapted, rtol=1e-4, atol=1e-4)


def test_length_groups_give_the_same_training_as_one_padded_batch(tiny, monkeypatch):
    import copy

    from seal_lm import engine as E

    assert E.length_groups([10, 200, 12, 190]) == [[0, 2], [3, 1]]
    assert E.length_groups([50, 52, 55]) == [[0, 1, 2]]  # too little to save: one group
    plans = [TrainPlan([("", "short."), ("", "A much longer line about the fictional town of Brask, its towers, "
                                          "its seven bridges and the river that runs under all of them.")], seed=1),
             TrainPlan([("", "tiny"), ("", "also tiny")], seed=2)]
    cfg = dataclasses.replace(CFG, batching="padded")
    grouped = Engine(copy.deepcopy(tiny), n_slots=2, lora=LoRAConfig(r=4, alpha=8))
    g = grouped.train(plans, cfg, progress=False)
    monkeypatch.setattr(E, "length_groups", lambda lengths, **kw: [list(range(len(lengths)))])
    single = Engine(tiny, n_slots=2, lora=LoRAConfig(r=4, alpha=8))
    s = single.train(plans, cfg, progress=False)
    assert g.tokens == s.tokens and g.padded_tokens < s.padded_tokens  # the grouped run really computed fewer (padded) tokens
    for k in range(2):
        torch.testing.assert_close(torch.tensor(g.losses[k]), torch.tensor(s.losses[k]), rtol=1e-4, atol=1e-5)
        for name, t in grouped.lora.adapter_state(k).items():
            # Adam divides by sqrt(v): where a gradient is ~0 (q_proj on 2-token rows), summation-order
            # noise becomes steps of up to ~lr/20; weights are ~2e-3, a wrong gradient moves them ~1e-3
            torch.testing.assert_close(t, single.lora.adapter_state(k)[name], rtol=1e-3, atol=1e-4)


def _train_packed_and_padded(loaded, plans, n_slots, slots):
    """Train `plans` on copies of a float64 `loaded` with packed and with padded steps; assert equal losses and
    adapters (fp32 adapters and gradients on a float64 model: differences of ~1e-7 remain). Returns the stats."""
    runs = {}
    for batching in ("packed", "padded"):
        model = copy.deepcopy(loaded)
        model.model.to(torch.float64)
        eng = Engine(model, n_slots=n_slots, lora=LoRAConfig(r=4, alpha=8))
        stats = eng.train(plans, dataclasses.replace(CFG, batching=batching), progress=False, slots=slots)
        runs[batching] = stats, [eng.lora.adapter_state(k) for k in slots]
    (p, p_state), (q, q_state) = runs["packed"], runs["padded"]
    for k in range(len(plans)):
        torch.testing.assert_close(torch.tensor(p.losses[k]), torch.tensor(q.losses[k]), rtol=1e-6, atol=1e-5)
        for name, t in p_state[k].items():
            torch.testing.assert_close(t, q_state[k][name], rtol=1e-5, atol=2e-6)
    return p, q


@pytest.mark.parametrize("attention,block_columns", [("sdpa", 64), ("eager", 64), ("sdpa", 4)])
def test_packed_training_equals_padded(tiny, attention, block_columns, monkeypatch):
    """Packed steps (the CPU default: one row, no padding, attention split per sequence, adapters by token
    range) train exactly like padded batches, with adapters sharing a step and rows of different lengths.
    In float64: in fp32 Adam turns summation-order noise on ~0 gradients into weight differences of ~1e-3.
    With `eager` attention (what `batching: packed` meets off the CPU-sdpa path) transformers must mask
    attention to each sequence from the restarting position ids. block_columns 64 puts every adapter of a
    pass in one masked block (r=4), 4 gives each its own block (how fp32 passes run, FP32_BLOCK_COLUMNS)."""
    from seal_lm import lora

    monkeypatch.setattr(lora, "BLOCK_COLUMNS", block_columns)  # a float64 pass takes the non-fp32 default
    tiny.model.set_attn_implementation(attention)
    plans = [TrainPlan([("Q: where? A:", " Brask, by the river."), ("", "The seven bridges of Brask cross the "
                                                                   "river Ul, which runs under all of them.")], seed=1),
             TrainPlan([("", "tiny"), ("", "also tiny"), ("", "a third line")], seed=2),
             TrainPlan([("", "one line only, but a longer one than most of the others")], seed=3, epochs=5)]
    p, q = _train_packed_and_padded(tiny, plans, n_slots=4, slots=[3, 0, 2])
    assert p.tokens == q.tokens == p.padded_tokens < q.padded_tokens and p.trained_tokens == q.trained_tokens
    assert p.steps == q.steps == 6
    assert p.losses[2][-1] < p.losses[2][0]


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_packed_training_equals_padded_on_other_architectures(tiny, arch):
    """Qwen2's biased q/k/v projections (their outputs are views, updated in place by the packed LoRA) and
    Mistral's sliding window (4 tokens here, shorter than the lines: the packed attention must apply it)."""
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    from seal_lm.models import LoadedModel

    tok = tiny.tokenizer
    dims = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg = Qwen2Config(**dims) if arch == "qwen2" else MistralConfig(**dims, sliding_window=4)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    base = LoadedModel(model=AutoModelForCausalLM.from_config(cfg), tokenizer=tok, name=arch)
    plans = [TrainPlan([("Q: where? A:", " Brask, by the river."), ("", "The seven bridges of Brask cross the river.")], seed=1),
             TrainPlan([("", "tiny"), ("", "also tiny"), ("", "a third line")], seed=2)]
    _train_packed_and_padded(base, plans, n_slots=2, slots=[0, 1])


def test_packed_batch_targets_stay_within_each_row():
    from seal_lm.engine import _packed_batch, _padded_batch, _token_ranges

    rows = [([1, 2, 3], [-100, 2, 3]), ([4, 5], [4, 5]), ([6], [6])]
    b = _packed_batch(rows)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]] and b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert b["targets"].tolist() == [[2, 3, -100, 5, -100, -100]] and b["seal_seq_lengths"] == [3, 2, 1]
    assert _padded_batch(rows, 0)["targets"].tolist() == [[2, 3, -100], [5, -100, -100], [-100, -100, -100]]
    assert _token_ranges([4, 4, 1], [3, 2, 1]) == [(4, 0, 5), (1, 5, 6)]
    with pytest.raises(ValueError, match="batching"):
        TrainConfig(batching="jagged")


@pytest.mark.parametrize("per_block,biased", [(1, False), (2, False), (None, False), (None, True)])
def test_segment_lora_gradients_equal_autograd_and_accumulate_in_place(per_block, biased):
    """_SegmentLoRA (packed steps) == the per-token reference under autograd, for x, y, A and B, with one
    adapter per block, blocks of two and all adapters in one masked block; a second call adds into the
    existing .grad; tokens outside every range get no adapter. `biased`: y is the output
    of a linear layer with a bias, which F.linear returns as a view (Qwen2's q/k/v projections): updating
    it in place must not mix up the gradients of x and y."""
    from seal_lm.lora import TokenRoute, _SegmentLoRA

    g = torch.Generator().manual_seed(0)
    k, r, d_in, d_out, T = 4, 3, 6, 5, 11
    A0 = torch.randn(k, r, d_in, generator=g, dtype=torch.float64)
    B0 = torch.randn(k, d_out, r, generator=g, dtype=torch.float64)
    # tokens 9, 10 of call 1 and 0, 1 of call 2 have no adapter; call 3 routes every token
    # call 4: three adapters, so blocks of two hold a masked pair and a single; 1 and 2 are a slot range
    calls = [[(2, 0, 4), (0, 4, 9)], [(1, 2, 11)], [(0, 0, 6), (2, 6, 11)], [(1, 0, 3), (2, 3, 5), (3, 6, 10)]]

    def reference(x, y, A, B, segments, scale):
        out = y
        for j, lo, hi in segments:
            sel = torch.zeros(T, 1, dtype=x.dtype)
            sel[lo:hi] = 1
            out = out + scale * sel * ((x[0] @ A[j].t()) @ B[j].t())
        return out

    grads = {}
    ours = lambda x, y, A, B, seg, scale: _SegmentLoRA.apply(y, x, A, B, TokenRoute.build(seg, T, "cpu", r, per_block), scale, True)  # noqa: E731
    W0, bias0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)
    for name, fn in (("ours", ours), ("autograd", reference)):
        A, B = torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())
        W, bias = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(bias0.clone())
        got = []
        for i, segments in enumerate(calls):
            x = torch.randn(1, T, d_in, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            x.requires_grad_(True)
            y_leaf = x.detach()[..., :d_out].clone().requires_grad_(True)
            # y: a fresh (non-leaf) tensor like a base output, or a biased linear's output (a view)
            y = torch.nn.functional.linear(x, W, bias) if biased else y_leaf * 1.5
            out = fn(x, y, A, B, segments, 2.0)
            (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
            got += [out.detach(), x.grad] + ([W.grad.clone(), bias.grad.clone()] if biased else [y_leaf.grad])
        grads[name] = (A.grad.clone(), B.grad.clone(), got)
    (a1, b1, o1), (a2, b2, o2) = grads["ours"], grads["autograd"]
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(b1, b2)
    for u, v in zip(o1, o2):
        torch.testing.assert_close(u, v)
    assert all(a1[j].abs().sum() > 0 for j in range(4))
    route = TokenRoute.build(calls[0], T, "cpu", r, per_block)
    assert not route.covers_all and TokenRoute.build(calls[2], T, "cpu", r, per_block).covers_all
    # call 4: blocks of at most per_block adapters (default: all of them at r=3), in token order
    blocks = TokenRoute.build(calls[3], T, "cpu", r, per_block).blocks
    want = {1: [[1], [2], [3]], 2: [[1, 2], [3]], None: [[1, 2, 3]]}[per_block]
    assert [b.slots for b in blocks] == want and [b.mask is None for b in blocks] == [len(w) == 1 for w in want]
    if per_block is None:  # token 5 belongs to no adapter: its mask row is all zero
        assert blocks[0].mask[5].sum() == 0 and blocks[0].mask[6].tolist() == [0] * 6 + [1] * 3
    from seal_lm.lora import MultiLoRA

    lora = MultiLoRA(torch.nn.Sequential(torch.nn.Linear(4, 4)), 3, LoRAConfig(r=2, target_modules=("0",)))
    for bad in ([(0, 0, 4), (0, 4, 6)], [(1, 3, 6), (0, 0, 4)], [(3, 0, 2)], [(0, 0, 9)], [(0, 2, 2)], []):
        with pytest.raises(ValueError, match="packed"):
            with lora.packed(bad, 8):
                pass


def test_length_groups_are_the_cheapest_split():
    from itertools import combinations

    from seal_lm.engine import length_groups

    lengths = [151, 30, 44, 28, 60, 151, 35, 52, 41, 29, 140, 33]

    def cost(groups):
        return sum(len(g) * max(lengths[i] for i in g) + 32 for g in groups)

    got = length_groups(lengths, max_groups=4, overhead=32)
    assert sorted(i for g in got for i in g) == list(range(len(lengths))) and len(got) <= 4
    srt = sorted(range(len(lengths)), key=lambda i: lengths[i])
    # brute force over every split of the sorted rows into at most 4 contiguous groups
    best = min(cost([srt[a:b] for a, b in zip((0,) + cuts, cuts + (len(srt),))])
               for n_cuts in range(4) for cuts in combinations(range(1, len(srt)), n_cuts))
    assert cost(got) == best


def check_batched_adamw_against_torch_adamw(device="cpu"):
    """Per-adapter lr, step counts and activity (ARC recipes, adapters finishing early): each slice must
    follow torch.optim.AdamW run on that adapter alone, skipping the steps where it was inactive.
    (Also run on a GPU by benchmarks/device_check.py.)"""
    from seal_lm.lora import BatchedAdamW

    torch.manual_seed(0)
    k_n = 4
    params = [torch.nn.Parameter(torch.randn(k_n, 3, 5).to(device)), torch.nn.Parameter(torch.randn(k_n, 7).to(device))]
    alone = [[torch.nn.Parameter(p[k].detach().clone()) for p in params] for k in range(k_n)]
    lrs = torch.tensor([1e-2, 3e-3, 1e-2, 5e-2])
    opt = BatchedAdamW(params, k_n, weight_decay=0.1)
    refs = [torch.optim.AdamW(alone[k], lr=float(lrs[k]), weight_decay=0.1) for k in range(k_n)]
    masks = [[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0], [1, 0, 1, 0]]  # contiguous and not
    for mask in masks:
        active = torch.tensor(mask, dtype=torch.bool)
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(lrs, active)
        opt.zero_grad()
        for k in range(k_n):
            if mask[k]:
                for q, g in zip(alone[k], grads):
                    q.grad = g[k].clone()
                refs[k].step()
    for k in range(k_n):
        for p, q in zip(params, alone[k]):
            torch.testing.assert_close(p[k], q.detach(), rtol=1e-5, atol=1e-6)


def test_batched_adamw_equals_torch_adamw_per_adapter():
    check_batched_adamw_against_torch_adamw()


def test_decoding_by_adapter_slices_equals_per_row_gather(tiny):
    """No-grad forwards take each adapter's rows as one slice when rows are sorted by slot (what
    generate does), the per-row gather otherwise; both must give every row its own adapter."""
    import copy

    engine = Engine(copy.deepcopy(tiny), n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for _, m in engine.lora.modules:
            m.lora_B[:3].normal_(0, 0.05)  # three distinct non-zero adapters; the base slot stays zero
    ids = engine.tokenizer(["The bridge was built by"] * 5, return_tensors="pt")
    base = engine.base_slot

    def run(index):
        with engine.lora.use(index):
            return engine.model(**ids).logits

    alone = {k: run(k)[0] for k in (0, 1, 2, base)}
    sorted_rows = [0, 1, 1, 2, base]
    assert engine.lora.segments is None
    with engine.lora.use(sorted_rows):
        assert engine.lora.segments == [(0, 0, 1), (1, 1, 3), (2, 3, 4)]  # the base slot is skipped
    interleaved = [1, base, 0, 1, 2]
    for index in (sorted_rows, interleaved):
        with torch.no_grad():
            out = run(index)
        for row, k in enumerate(index):
            torch.testing.assert_close(out[row], alone[k], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[base])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_decoding_steps_apply_all_adapters_at_once(tiny, dtype):
    """Inside lora.decoding(), a one-token no-grad step runs every adapter with two matmuls over stacked
    weights and a row mask; each row must still get exactly its own adapter (any order, base rows, a
    single index for the whole batch), and nothing changes outside the block or for longer inputs. In bf16
    the wrapper is the bf16 twin's, whose fp32 adapters are shared with the fp32 model (as in decoding)."""
    import copy

    engine = Engine(copy.deepcopy(tiny), n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for _, m in engine.lora.modules:
            m.lora_B[:3].normal_(0, 0.05)
    base = engine.base_slot
    name = engine.lora.modules[0][0]
    m = engine.lora.modules[0][1]
    if dtype != torch.float32:
        engine.compute_model("bfloat16")
        m = engine.lora.mirrors[0][name]
        assert m.lora_A is engine.lora.modules[0][1].lora_A and m.base.weight.dtype == dtype
    x = torch.randn(6, 1, m.base.in_features, dtype=dtype)
    index = [2, base, 0, 2, 1, 0]
    with torch.no_grad():
        with engine.lora.use(index):
            want = m(x)  # the per-row gather
        with engine.lora.decoding([0, 1, 2, base]):
            assert engine.lora.decode_slots == [0, 1, 2]  # the all-zero base slot is left out
            with engine.lora.use(index):
                got = m(x)
                assert engine.lora.decode_mask.shape == (6, 12)
                assert engine.lora._decode_weights  # the stacked path ran
                # a prompt (more than one token) still takes the regular path
                torch.testing.assert_close(m(x.expand(6, 3, -1).contiguous())[:, 2:], want)
            with engine.lora.use(1):
                one = m(x)
            with engine.lora.use([1] * 6):
                torch.testing.assert_close(one, m(x))
        assert engine.lora.decode_mask is None and engine.lora.decode_slots == []
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    assert not torch.allclose(got[0].float(), m.base(x)[0].float())  # the adapters did something


def test_stacked_decoding_falls_back_and_never_uses_stale_weights(tiny):
    """A row whose adapter is not among the block's slots takes the regular path (not a silent no-op); an
    inner block does not inherit the outer one's mask; an adapter changed inside a block is re-stacked."""
    import copy

    engine = Engine(copy.deepcopy(tiny), n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for _, m in engine.lora.modules:
            m.lora_B[:3].normal_(0, 0.05)
    m = engine.lora.modules[0][1]
    x = torch.randn(4, 1, m.base.in_features)

    def gather(index):
        with engine.lora.use(index):
            return m(x)

    with torch.no_grad():
        want2, want0 = gather([2] * 4), gather([0, 0, 1, 1])
        with engine.lora.decoding([0, 1]):
            with engine.lora.use([2] * 4):
                assert engine.lora.decode_mask is None
                torch.testing.assert_close(m(x), want2)
            with engine.lora.use([0, 0, 1, 1]):
                torch.testing.assert_close(m(x), want0)
                with engine.lora.decoding([engine.base_slot]), engine.lora.use([engine.base_slot] * 4):
                    torch.testing.assert_close(m(x), m.base(x))
                m.lora_B[0].mul_(2.0)  # e.g. an optimizer step between two decoding steps
                after = m(x)
        torch.testing.assert_close(after, gather([0, 0, 1, 1]))  # the regular path, outside the block
        assert not torch.allclose(after, want0)


def test_clip_grad_norm_per_adapter_equals_clipping_each_adapter_alone():
    from seal_lm.lora import clip_grad_norm_per_adapter

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 6, 4), (3, 2, 7)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, scale in zip(params, [1.0, 0.1, 3.0]):
        p.grad = torch.randn(p.shape, generator=g) * scale
    params[0].grad[2] *= 1e-3  # adapter 2's gradient is small: below max_norm, so left unscaled
    params[1].grad[2] *= 1e-3
    params[2].grad[2] *= 1e-3
    expected = []
    for k in range(3):
        alone = [torch.nn.Parameter(torch.zeros(s[1:])) for s in shapes]
        for a, p in zip(alone, params):
            a.grad = p.grad[k].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, max_norm=1.0)
        expected.append(([a.grad for a in alone], norm))
    before2 = [p.grad[2].clone() for p in params]
    norms = clip_grad_norm_per_adapter(params, 1.0, 3)
    for k, (grads, norm) in enumerate(expected):
        torch.testing.assert_close(norms[k], norm, rtol=1e-5, atol=1e-6)
        for p, want in zip(params, grads):
            torch.testing.assert_close(p.grad[k], want, rtol=1e-5, atol=1e-6)
    assert norms[0] > 1 and norms[1] > 1 and norms[2] < 1  # the test covers both clipped and unclipped adapters
    for p, b in zip(params, before2):
        assert torch.equal(p.grad[2], b)


def reference_row_lora(x, y, lora_A, lora_B, index, scale):
    a = lora_A.index_select(0, index).to(x.dtype)
    b = lora_B.index_select(0, index).to(x.dtype)
    return torch.baddbmm(y, torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2), alpha=scale)


def test_row_lora_gradients_equal_autograd_and_accumulate_in_place():
    """_RowLoRA's hand-written backward == autograd through gather + bmm, for x, y, A and B; a second
    backward (the next length group of a step) adds into the existing .grad instead of replacing it."""
    from seal_lm.lora import _RowLoRA

    g = torch.Generator().manual_seed(0)
    k, r, d_in, d_out = 4, 3, 6, 5
    A0 = torch.randn(k, r, d_in, generator=g, dtype=torch.float64)
    B0 = torch.randn(k, d_out, r, generator=g, dtype=torch.float64)
    batches = [(torch.randn(3, 7, d_in, generator=g, dtype=torch.float64), torch.tensor([2, 0, 2])),
               (torch.randn(2, 4, d_in, generator=g, dtype=torch.float64), torch.tensor([1, 1]))]
    grads = {}
    in_place = lambda *a: _RowLoRA.apply(*a, True)  # noqa: E731  (what Engine.train does)
    for name, fn in (("ours", in_place), ("autograd", reference_row_lora)):
        A, B = torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())
        xs_grads = []
        for x0, index in batches:
            x = x0.clone().requires_grad_(True)
            y = (x0 * 0.5)[..., :d_out].clone().requires_grad_(True)
            out = fn(x, y, A, B, index, 2.0)
            (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
            xs_grads += [x.grad, y.grad]
        grads[name] = (A.grad.clone(), B.grad.clone(), xs_grads)
    (a1, b1, x1), (a2, b2, x2) = grads["ours"], grads["autograd"]
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(b1, b2)
    for u, v in zip(x1, x2):
        torch.testing.assert_close(u, v)
    assert a1[3].abs().sum() == 0 and a1[0].abs().sum() > 0  # adapter 3 had no rows; 0 (batch 1) and 1 (batch 2) did
    assert a1[1].abs().sum() > 0
    # outside Engine.train the gradient goes through autograd: torch.autograd.grad sees it, .grad is untouched
    A, B = torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())
    A.grad = torch.zeros_like(A)
    x0, index = batches[0]
    got = torch.autograd.grad(_RowLoRA.apply(x0, x0[..., :d_out], A, B, index, 2.0, False).sum(), [A, B])
    want = torch.autograd.grad(reference_row_lora(x0, x0[..., :d_out], A, B, index, 2.0).sum(), [A, B])
    torch.testing.assert_close(got, want)
    assert A.grad.abs().sum() == 0


def test_clip_and_zero_grad_touch_only_the_active_adapters():
    from seal_lm.lora import BatchedAdamW, clip_grad_norm_per_adapter

    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.zeros(5, 4, 3)), torch.nn.Parameter(torch.zeros(5, 2))]
    active = torch.tensor([False, True, False, True, False])
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 4
        p.grad[~active] = 0  # only active adapters get gradients in a step
    full = [p.grad.clone() for p in params]
    ref = [torch.nn.Parameter(torch.zeros_like(p)) for p in params]
    for q, f in zip(ref, full):
        q.grad = f.clone()
    norms = clip_grad_norm_per_adapter(params, 1.0, 5, active)
    ref_norms = clip_grad_norm_per_adapter(ref, 1.0, 5)
    torch.testing.assert_close(norms, ref_norms)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.grad, q.grad)
    assert norms[1] > 1 and norms[3] > 1 and norms[0] == 0
    opt = BatchedAdamW(params, 5)
    params[0].grad[4] = 7.0  # outside the active range [1, 4): zero_grad(active) leaves it alone
    opt.zero_grad(active)
    assert params[0].grad[:4].abs().sum() == 0 and params[1].grad.abs().sum() == 0
    assert (params[0].grad[4] == 7.0).all()


def test_batched_adamw_with_a_grad_laid_out_unlike_its_parameter():
    """The fused CPU kernel ignores strides; a transposed .grad must still give torch.optim.AdamW's update."""
    from seal_lm.lora import BatchedAdamW

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(2, 4, 3))
    q = torch.nn.Parameter(p.detach().clone())
    grad = torch.randn(2, 3, 4).transpose(1, 2)  # shape [2, 4, 3], not contiguous
    p.grad, q.grad = grad, grad.contiguous()
    BatchedAdamW([p], 2).step(torch.tensor([0.1, 0.1]), torch.tensor([True, True]))
    torch.optim.AdamW([q], lr=0.1, weight_decay=0.0).step()
    torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("small_block", [0, 1 << 20])
def test_segment_lora_in_bf16_small_blocks_in_fp32_and_large_in_bf16(small_block, monkeypatch):
    """On a bf16 pass a block of at most SMALL_BLOCK tokens x columns runs its matmuls in fp32, a larger one in
    bf16; both give the fp64 reference's output and gradients to bf16 precision."""
    import seal_lm.lora as lora_mod
    from seal_lm.lora import TokenRoute, _SegmentLoRA

    monkeypatch.setattr(lora_mod, "SMALL_BLOCK", small_block)
    g = torch.Generator().manual_seed(0)
    k, r, d_in, d_out, T = 3, 4, 32, 24, 40
    segments = [(0, 0, 12), (2, 12, 30), (1, 31, 40)]  # token 30 has no adapter
    A0, B0 = torch.randn(k, r, d_in, generator=g), torch.randn(k, d_out, r, generator=g) * 0.3
    x0 = torch.randn(1, T, d_in, generator=g).bfloat16()
    y0 = torch.randn(1, T, d_out, generator=g).bfloat16()
    w = torch.randn(1, T, d_out, generator=g)  # the loss's weights
    route = TokenRoute.build(segments, T, "cpu", r, per_block=2)
    assert [b.small for b in route.blocks] == [bool(small_block)] * 2

    def grads(dtype, fn):
        A, B = torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())
        x = x0.detach().to(dtype).clone().requires_grad_(True)
        y_leaf = y0.detach().to(dtype).clone().requires_grad_(True)
        out = fn(x, y_leaf * 1, A, B)
        (out.double() * w.double()).sum().backward()
        return out.detach().double(), x.grad.double(), A.grad.double(), B.grad.double()

    def reference(x, y, A, B):
        out = y
        for j, lo, hi in segments:
            sel = torch.zeros(T, 1, dtype=x.dtype)
            sel[lo:hi] = 1
            out = out + 2.0 * sel * ((x[0] @ A[j].to(x.dtype).t()) @ B[j].to(x.dtype).t())
        return out

    ours = grads(torch.bfloat16, lambda x, y, A, B: _SegmentLoRA.apply(y, x, A, B, route, 2.0, False))
    want = grads(torch.float64, reference)
    for got, ref in zip(ours, want):
        torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


@pytest.mark.parametrize("compute_dtype,per_block", [("float32", "fp32"), ("bfloat16", "bf16")])
def test_packed_passes_group_adapters_by_the_compute_dtype(tiny, compute_dtype, per_block, monkeypatch):
    """fp32 passes give each adapter its own block (FP32_BLOCK_COLUMNS // r), bf16 ones share masked blocks
    of BLOCK_COLUMNS // r adapters: the per-dtype choice measured in docs/RESULTS.md reaches Engine.train."""
    from seal_lm import lora

    built = []
    real_build = lora.TokenRoute.build.__func__

    def spy(cls, segments, n_tokens, device, r, per_block=None):
        route = real_build(cls, segments, n_tokens, device, r, per_block)
        built.append([len(b.slots) for b in route.blocks])
        return route

    monkeypatch.setattr(lora.TokenRoute, "build", classmethod(spy))
    monkeypatch.setattr(lora, "BLOCK_COLUMNS", 8)  # 2 adapters per block at r=4
    monkeypatch.setattr(lora, "FP32_BLOCK_COLUMNS", 4)  # 1
    eng = Engine(tiny, n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    eng.train(PLANS, dataclasses.replace(CFG, batching="packed", compute_dtype=compute_dtype), progress=False)
    assert built and built[0] == ([1, 1, 1] if per_block == "fp32" else [2, 1])
    assert all(max(sizes) <= (1 if per_block == "fp32" else 2) for sizes in built)  # later steps: fewer adapters
