"""Cost of a packed training step by its size: does a bigger step (more adapters per group) amortise anything?

Trains K adapters on the embedded model, each on two SEAL-sized lines (~40 tokens) plus a passage-sized one
(~160 tokens), 3 epochs at batch 2, for each K given, and prints wall seconds per step and per token. If
per-step fixed costs dominated, ms/token would fall as K grows; if it stays flat, the step's cost is
per-token work (matmuls, elementwise passes, attention) and larger groups (`--slots`) cannot help.

    python benchmarks/step_scale.py [--adapters 2,8,32] [--compute-dtype auto] [--block-columns N]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from seal_lm import lora as lora_mod
from seal_lm.engine import Engine, TrainConfig, TrainPlan
from seal_lm.lora import LoRAConfig
from seal_lm.models import load_model

LINE = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."
PASSAGE = " ".join([LINE] * 6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", default="2,8,32", help="comma-separated adapter counts (one group each)")
    ap.add_argument("--compute-dtype", default="auto")
    ap.add_argument("--block-columns", type=int, default=None, help="override lora.BLOCK_COLUMNS and lora.FP32_BLOCK_COLUMNS")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.block_columns:  # both dtypes' defaults, so the override holds whatever the training dtype
        lora_mod.BLOCK_COLUMNS = lora_mod.FP32_BLOCK_COLUMNS = args.block_columns
    ks = [int(x) for x in args.adapters.split(",")]
    loaded = load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32)
    engine = Engine(loaded, n_slots=max(ks), lora=LoRAConfig(r=16, alpha=32))
    cfg = TrainConfig(learning_rate=1e-3, epochs=3, batch_size=2, compute_dtype=args.compute_dtype)
    print(f"torch threads {torch.get_num_threads()}, train.compute_dtype {args.compute_dtype}, "
          f"BLOCK_COLUMNS {lora_mod.BLOCK_COLUMNS} (fp32: {lora_mod.FP32_BLOCK_COLUMNS})")
    print("| adapters | steps | tokens | wall s | ms/step | ms/token | max RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        plans = [TrainPlan([("", f"{LINE} ({i}, a)"), ("", f"{LINE} ({i}, b)"), ("", f"{PASSAGE} ({i})")], seed=i)
                 for i in range(k)]
        engine.train(plans[:2], cfg, progress=False)  # warm-up
        t0 = time.perf_counter()
        stats = engine.train(plans, cfg, progress=False)
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"| {k} | {stats.steps} | {stats.tokens} | {wall:.2f} | {1000 * wall / stats.steps:.0f} | "
              f"{1000 * wall / stats.tokens:.3f} | {rss:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
