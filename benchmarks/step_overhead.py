"""The fixed cost of one inner-loop training step: what a step costs beyond its matrix multiplies.

SEAL's training lines are short (20-60 tokens), so per-step work that does not scale with tokens — graph
bookkeeping of ~210 LoRA-wrapped linears, gradient buffers, clipping and the optimizer over K stacked
adapters — is a large share of a step. This script measures it on the embedded model:

  1. ms per step of `Engine.train` on rows of 3 tokens (1 adapter, then `--slots` adapters): almost no
     FLOPs, so the time is the step's fixed cost;
  2. ms of gradient clipping + optimizer step alone, on the stacked adapter shapes of the model
     (`--slots` active adapters of `--slots`+1 slots, rank `--r`).

    python benchmarks/step_overhead.py [--slots 8] [--r 16] [--dtype float32] [--threads 2]

To compare code versions, run it with PYTHONPATH pointing at each checkout's src/.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time

import torch

from seal_lm.engine import Engine, TrainConfig, TrainPlan
from seal_lm.lora import BatchedAdamW, LoRAConfig, clip_grad_norm_per_adapter
from seal_lm.models import EMBEDDED, load_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", default="float32", help="model dtype (training passes follow train.compute_dtype auto)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    loaded = load_model(args.model, device=dev, dtype=getattr(torch, args.dtype))
    eng = Engine(loaded, n_slots=args.slots, lora=LoRAConfig(r=args.r, alpha=2 * args.r))
    cfg = TrainConfig(learning_rate=1e-3, epochs=args.steps)
    print(f"{args.model} on {dev} ({args.dtype}), r={args.r}, {args.slots} slots, torch threads {torch.get_num_threads()}")
    for rows in (1, args.slots):
        plans = [TrainPlan([("", "a b")], seed=i, epochs=args.steps) for i in range(rows)]
        eng.train(plans, cfg, progress=False)  # warm-up (allocations, the bf16 twin)
        sync()
        t0 = time.perf_counter()
        stats = eng.train(plans, cfg, progress=False)
        sync()
        print(f"train step, {rows} row(s) of 3 tokens: {1e3 * (time.perf_counter() - t0) / stats.steps:.1f} ms", flush=True)

    params = [torch.nn.Parameter(torch.zeros_like(p)) for p in eng.lora.parameters()]
    g = torch.Generator(device=dev).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=dev) * 0.01
    n = eng.lora.n_adapters
    active = torch.zeros(n, dtype=torch.bool)
    active[: args.slots] = True
    lr = torch.full((n,), 1e-3)
    opt = BatchedAdamW(params, n)

    takes_active = "active" in inspect.signature(clip_grad_norm_per_adapter).parameters  # not before session 5

    def clip():
        clip_grad_norm_per_adapter(params, 1.0, n, *([active] if takes_active else []))

    for _ in range(3):
        clip()
        opt.step(lr, active)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        clip()
    sync()
    t1 = time.perf_counter()
    for _ in range(args.steps):
        opt.step(lr, active)
    sync()
    t2 = time.perf_counter()
    size = sum(p[: args.slots].numel() for p in params)
    print(f"clip {1e3 * (t1 - t0) / args.steps:.1f} ms, optimizer step {1e3 * (t2 - t1) / args.steps:.1f} ms "
          f"({len(params)} stacked tensors, {size / 1e6:.1f}M active fp32 adapter weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
