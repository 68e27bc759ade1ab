"""Correctness of the engine's fast paths on an accelerator, where CI cannot go (CI has no GPU).

The unit tests check these properties on the CPU; this script re-checks the ones whose kernels differ
on CUDA (fused LM-head loss, batched LoRA training, the custom decoder, merging) on a given device,
prints one PASS/FAIL line per check and exits non-zero if any failed. With the embedded model it also
reports how often greedy answers of the engine and of HF `generate` agree in bf16 (not a pass/fail
matter: bf16 results depend on batch shapes), and with `--profile` it prints where the time of one
K-adapter training call goes (torch.profiler, kernel time and kernel-launch counts).

    python benchmarks/device_check.py --device cuda [--embedded] [--profile]
    python benchmarks/device_check.py --device cpu        # the script's own check, on this machine
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from seal_lm.engine import Engine, GenerationConfig, TrainConfig, TrainPlan
from seal_lm.linear_ce import linear_cross_entropy
from seal_lm.lora import LoRAConfig
from seal_lm.models import EMBEDDED, load_model

# the unit tests' own references and fixtures, so a device is held to exactly what CI checks on the CPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_decode import PROMPTS, engine_greedy, hf_greedy, random_adapters  # noqa: E402
from test_lora import PLANS, check_batched_adamw_against_torch_adamw, reference_row_lora  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def check(name):
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                detail = fn(*a, **kw) or ""
                ok = True
            except Exception as e:  # report and go on: one failure must not hide the others
                detail = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                ok = False
            RESULTS.append((name, ok, detail))
            print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.1f}s) {detail}", flush=True)
        return run
    return wrap


@check("fused LM-head loss == F.cross_entropy (fp32, bf16; values and gradients)")
def check_linear_ce(dev):
    out = []
    for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
        g = torch.Generator().manual_seed(1)
        hidden = torch.randn(300, 64, generator=g).to(dev, dtype)
        weight = (torch.randn(1000, 64, generator=g) * 0.3).to(dev, dtype)
        targets = torch.randint(0, 1000, (300,), generator=g).to(dev)
        h1 = hidden.clone().requires_grad_(True)
        ref = F.cross_entropy((h1 @ weight.t()).float(), targets, reduction="none")
        ref.mean().backward()
        h2 = hidden.clone().requires_grad_(True)
        got = linear_cross_entropy(h2, weight, targets, chunk=128)
        got.mean().backward()
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        torch.testing.assert_close(h2.grad.float(), h1.grad.float(), rtol=tol, atol=tol * 1e-2)
        out.append(f"{str(dtype)[6:]} max|dloss| {(got - ref).abs().max().item():.2e}")
    return "; ".join(out)


@check("per-row LoRA backward == autograd; BatchedAdamW == torch.optim.AdamW per adapter")
def check_lora_kernels(dev):
    from seal_lm.lora import _RowLoRA

    g = torch.Generator().manual_seed(0)
    k, r, d_in, d_out = 4, 3, 16, 12
    masters = [torch.randn(k, r, d_in, generator=g), torch.randn(k, d_out, r, generator=g)]
    x0 = torch.randn(5, 7, d_in, generator=g)
    index = torch.tensor([2, 0, 2, 3, 0], device=dev)
    worst = []
    for act_dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]:
        grads = []
        for ours in (True, False):
            A, B = (torch.nn.Parameter(t.clone().to(dev)) for t in masters)
            x = x0.to(dev, act_dtype).detach().clone().requires_grad_(True)
            y = torch.zeros(5, 7, d_out, device=dev, dtype=act_dtype)
            out = (_RowLoRA.apply(x, y, A, B, index, 2.0, False) if ours
                   else reference_row_lora(x, y, A, B, index, 2.0))
            out.float().sin().sum().backward()
            grads.append((x.grad.float(), A.grad, B.grad))
        for u, v in zip(*grads):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol)
            worst.append((u - v).abs().max().item())
    check_batched_adamw_against_torch_adamw(dev)
    return f"max |grad difference| fp32 {max(worst[:3]):.1e}, bf16 activations {max(worst[3:]):.1e}"


@check("K adapters trained together == one by one (tiny model, fp32)")
def check_batched_training(tiny, dev):
    cfg = TrainConfig(learning_rate=1e-3, epochs=3, batch_size=2, grad_clip=1.0, lr_schedule="linear",
                      compute_dtype="float32")
    engine = Engine(copy.deepcopy(tiny), n_slots=3, lora=LoRAConfig(r=4, alpha=8))
    batched = engine.train(PLANS, cfg, progress=False)
    states = [engine.lora.adapter_state(k) for k in range(3)]
    single = Engine(copy.deepcopy(tiny), n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    worst = 0.0
    for k, plan in enumerate(PLANS):
        stats = single.train([plan], cfg, progress=False)
        torch.testing.assert_close(torch.tensor(stats.losses[0]), torch.tensor(batched.losses[k]), rtol=1e-4, atol=1e-4)
        for name, t in single.lora.adapter_state(0).items():
            torch.testing.assert_close(t, states[k][name], rtol=1e-3, atol=1e-4)
            worst = max(worst, (t - states[k][name]).abs().max().item())
    assert batched.losses[2][-1] < batched.losses[2][0], "training did not reduce the loss"
    return f"max |adapter difference| {worst:.1e}"


@check("greedy decoding (in-place cache, rows finishing early, stacked adapters, shared prefill) == HF generate "
       "(tiny model, fp32)")
def check_decode(tiny):
    eng = Engine(copy.deepcopy(tiny), n_slots=2)
    random_adapters(eng)
    adapters = [0, 1, 2, 0]
    first = hf_greedy(eng, PROMPTS, 12, adapters)
    longest = max(range(len(first)), key=lambda i: len(first[i]))
    assert len(first[longest]) >= 4, f"greedy rows too short to pick an end token: {first}"
    eng.model.generation_config.eos_token_id = first[longest][3]  # a token greedy decoding emits: rows end early
    expected = hf_greedy(eng, PROMPTS, 12, adapters)
    lengths = sorted(len(x) for x in expected)
    assert lengths[0] < 12 and lengths[-1] == 12, f"rows should end at different steps: {lengths}"
    got = engine_greedy(eng, PROMPTS, 12, adapters)
    assert got == expected, f"engine {got} != HF {expected}"
    # repeated (prompt, adapter) rows: one shared prefill, its KV cache copied on the device
    rep_prompts, rep_adapters = [PROMPTS[1], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[1]], [0, 0, 1, 2, 1]
    rep_want = hf_greedy(eng, rep_prompts, 12, rep_adapters)
    rep_got = engine_greedy(eng, rep_prompts, 12, rep_adapters)
    assert rep_got == rep_want, f"shared prefill: engine {rep_got} != HF {rep_want}"
    texts, n = eng.generate(PROMPTS * 3, GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=0.9),
                            adapters=[0, 1, None] * 4, seed=5)
    assert n > 0 and len(texts) == 12
    return f"lengths {lengths}; sampling 12 rows: {n} tokens"


@check("merge_into_base keeps the adapted function (tiny model, fp32)")
def check_merge(tiny):
    eng = Engine(copy.deepcopy(tiny), n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    eng.train([TrainPlan([("", "merge me into the base weights")], seed=5, epochs=5)],
              TrainConfig(learning_rate=1e-2, compute_dtype="float32"), progress=False)
    ids = eng.tokenizer("The bridge was built by", return_tensors="pt").to(eng.device)
    with eng.lora.use(None):
        base = eng.model(**ids).logits
    with eng.lora.use(0):
        adapted = eng.model(**ids).logits
    assert (adapted - base).abs().max() > 1e-3, "training did not change the adapted model"
    eng.lora.merge_into_base(0)
    with eng.lora.use(None):
        merged = eng.model(**ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    return f"max |dlogit| {(merged - adapted).abs().max().item():.1e}"


@check("embedded model in bf16: training lowers the loss; greedy engine vs HF generate agreement")
def check_embedded(dev, dtype):
    loaded = load_model(EMBEDDED, device=dev, dtype=dtype)
    eng = Engine(loaded, n_slots=2, lora=LoRAConfig(r=8, alpha=16))
    plan = TrainPlan([("", "The Varnholt Bridge over the Selka was finished in 1874 by the engineer Oda Pellinen.")],
                     seed=1, epochs=10)
    stats = eng.train([plan, plan], TrainConfig(learning_rate=1e-3), progress=False)
    first, last = stats.losses[0][0], stats.losses[0][-1]
    assert last < first - 0.5, f"loss {first:.3f} -> {last:.3f}"
    prompts = [f"Question {i}: who built the bridge over the river, and in which year? Answer:" for i in range(6)]
    prompts += ["Write three facts about rivers.", "The capital of France is", "Once upon a time"]
    adapters = [0, 1, 2] * 3
    hf = hf_greedy(eng, prompts, 24, adapters)
    ours = engine_greedy(eng, prompts, 24, adapters)
    same = sum(a == b for a, b in zip(hf, ours))
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                 for a, b in zip(hf, ours)) / sum(max(len(a), 1) for a in hf)
    return f"loss {first:.3f} -> {last:.3f}; identical greedy rows {same}/{len(prompts)}, agreeing prefix {prefix:.0%}"


def profile_training(dev, dtype, model_name, k=5, epochs=2):
    """Where one K-adapter training call's time goes on this device (SEAL-sized lines, r=32)."""
    from torch.profiler import ProfilerActivity, profile

    loaded = load_model(model_name, device=dev, dtype=dtype)
    eng = Engine(loaded, n_slots=k, lora=LoRAConfig(r=32, alpha=64))
    line = "The Varnholt Bridge over the Selka river was finished in 1874 by the engineer Oda Pellinen, who "
    plans = [TrainPlan([("", line * (1 + (i + j) % 3)) for j in range(12)], seed=i, epochs=epochs) for i in range(k)]
    cfg = TrainConfig(learning_rate=1e-3, epochs=epochs)
    eng.train(plans, cfg, progress=False)  # warm-up (allocator, kernels)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    stats = eng.train(plans, cfg, progress=False)
    sync()
    wall = time.perf_counter() - t0
    steps = max(len(x) for x in stats.losses)
    print(f"training call: {k} adapters x {epochs} epochs, {steps} steps, {wall:.2f}s, {1e3 * wall / steps:.1f} ms/step",
          flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        eng.train(plans, cfg, progress=False)
        sync()
    events = prof.key_averages()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=25), flush=True)
    if dev.type == "cuda":
        kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        launches = sum(e.count for e in kernels)
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        print(f"kernels per step: {launches / steps:.0f}; GPU busy {busy:.2f}s of {wall:.2f}s wall "
              f"({busy / wall:.0%})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--embedded", action="store_true", help="also check the embedded model (needs its GGUF)")
    ap.add_argument("--dtype", default=None, help="embedded/profile model dtype (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--profile", default=None, metavar="MODEL",
                    help=f"profile one training call of MODEL (e.g. random:{EMBEDDED} or {EMBEDDED})")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    print(f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f", torch {torch.__version__}", flush=True)
    tiny = load_model("tiny-random", device=dev, dtype=torch.float32, seed=0)
    check_linear_ce(dev)
    check_lora_kernels(dev)
    check_batched_training(tiny, dev)
    check_decode(tiny)
    check_merge(tiny)
    if args.embedded:
        check_embedded(dev, dtype)
    if args.profile:
        profile_training(dev, dtype, args.profile)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"device checks: {len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
