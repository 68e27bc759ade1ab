"""Where a real inner-loop training call spends its time, and what its matmuls could do in isolation.

Rebuilds the first group of `slots` training plans of a finished `seal knowledge train` round (as
train_mfu.py does), trains it once to warm up, then once under torch.profiler and prints the ops by self
CPU time. Then times `x @ W.T` alone at the step's shapes (tokens x hidden x {hidden, kv, mlp}), in the
training dtype, so the profile's matmul time can be compared with what those matmuls cost on their own.

    python benchmarks/step_profile.py runs/rl3 [--compute-dtype auto] [--rows 25] [--slots 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inner_loop import load_knowledge_run  # noqa: E402

from seal_lm.engine import Engine, resolve_compute_dtype  # noqa: E402


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int = 20) -> float:
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    for _ in range(3):
        x @ w.t()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ w.t()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a `seal knowledge train` run directory")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--compute-dtype", default="auto")
    ap.add_argument("--rows", type=int, default=25, help="rows of the op table")
    ap.add_argument("--slots", type=int, default=None, help="adapters in the group (default: the run's --slots)")
    args = ap.parse_args(argv)
    cfg, units, passages, domain, loaded = load_knowledge_run(Path(args.run), None, args.compute_dtype)
    plans = []
    for key, u in units.items():
        if key.startswith(f"r{args.round}/gen/"):
            for i, text in enumerate(u["self_edits"]):
                plan = domain.training_plan(passages[u["unit"].split("/")[2]], text, i)
                if not isinstance(plan, str) and plan.examples:
                    plans.append(plan)
    slots = args.slots or cfg.slots
    group = plans[:slots]
    if not group:
        raise SystemExit(f"no r{args.round}/gen/* units with training plans in {args.run}/units.jsonl")
    engine = Engine(loaded, n_slots=slots, lora=cfg.lora)
    engine.train(group, cfg.train, progress=False)  # warm-up
    stats = engine.train(group, cfg.train, progress=False)
    print(f"{len(group)} adapters: {stats.seconds:.1f} s, {stats.steps} steps, {stats.tokens} tokens "
          f"({stats.padded_tokens} with padding)", flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.train(group, cfg.train, progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))

    dtype = resolve_compute_dtype(cfg.train.compute_dtype, next(loaded.model.parameters()).dtype, loaded.device)
    c = loaded.model.config
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    shapes = [(c.hidden_size, c.hidden_size), (c.hidden_size, kv), (c.hidden_size, c.intermediate_size),
              (c.intermediate_size, c.hidden_size)]
    print(f"x @ W.T alone, {dtype} (GFLOP/s); columns: in x out = " + ", ".join(f"{i}x{o}" for i, o in shapes))
    for m in (64, 180, 360, 720):
        rates = [matmul_rate(m, i, o, dtype, loaded.device) / 1e9 for i, o in shapes]
        print(f"  {m:4d} tokens: " + "  ".join(f"{r:6.0f}" for r in rates), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
