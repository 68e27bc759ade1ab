"""Inner-loop training throughput on a real ReST-EM round's self-edits: wall time vs FLOP floor (MFU).

Reads a `seal knowledge train` run directory, rebuilds the training plans of one round's self-edits
(the recorded texts through the same domain code), trains them in groups of `slots` adapters exactly as
the round's evaluator does, and prints per group: wall seconds, steps, real and padded tokens, the FLOP
floor (benchmarks/inner_loop.py's accounting: useful FLOPs only, at the matmul peak measured here) and
MFU. The peak is measured before the first group and after every group; the total uses the highest. The last
line is `training MFU: N.N%`. Only training is timed — no sampling, answering or grading.

    python benchmarks/train_mfu.py runs/rl2 --round 1 [--groups 8] [--threads 2] [--block-columns 64]

Run it on an idle machine; to compare code versions, point PYTHONPATH at another checkout's src/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inner_loop import load_knowledge_run, lora_in_out_sum, measure_peak, model_dims, train_flops  # noqa: E402

from seal_lm import lora as lora_mod  # noqa: E402
from seal_lm.engine import Engine, resolve_compute_dtype  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a `seal knowledge train` run directory")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--groups", type=int, default=None, help="only the first N groups (default: all)")
    ap.add_argument("--slots", type=int, default=None, help="adapters per group (default: the run's --slots)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--block-columns", type=int, default=None, help="override the LoRA columns per packed block (adapters per block x r; default lora.BLOCK_COLUMNS for bf16, lora.FP32_BLOCK_COLUMNS for fp32)")
    ap.add_argument("--dtype", default=None, help="base-model dtype (default: the run's)")
    ap.add_argument("--compute-dtype", default=None,
                    help="train.compute_dtype (default: the run's; runs that predate it trained in the model dtype)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.block_columns:  # both dtypes' defaults, so the override holds whatever the training dtype
        lora_mod.BLOCK_COLUMNS = lora_mod.FP32_BLOCK_COLUMNS = args.block_columns
    run = Path(args.run)
    cfg, units, passages, domain, loaded = load_knowledge_run(run, args.dtype, args.compute_dtype)
    gens = [u for key, u in units.items() if key.startswith(f"r{args.round}/gen/")]
    if not gens:
        raise SystemExit(f"no r{args.round}/gen/* units in {run}/units.jsonl")
    plans = []
    for g in gens:
        p = passages[g["unit"].split("/")[2]]
        for i, text in enumerate(g["self_edits"]):
            plan = domain.training_plan(p, text, i)
            if not isinstance(plan, str) and plan.examples:
                plans.append(plan)
    dims = model_dims(loaded.model)
    lora_io = lora_in_out_sum(loaded.model, set(cfg.lora.target_modules))
    slots = args.slots or cfg.slots
    engine = Engine(loaded, n_slots=slots, lora=cfg.lora)
    train_dtype = resolve_compute_dtype(cfg.train.compute_dtype, next(loaded.model.parameters()).dtype, loaded.device)
    print(f"load average {os.getloadavg()}; measuring the {train_dtype} matmul peak ...", flush=True)
    peak = measure_peak(loaded.device, train_dtype)["flops_per_s"]
    groups = [plans[i:i + slots] for i in range(0, len(plans), slots)][: args.groups]
    print(f"{train_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}; "
          f"{len(plans)} self-edits of round {args.round}, {len(groups)} groups of <= {slots}")
    print("| group | adapters | wall s | steps | real tokens | padded tokens | floor s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    total_s = total_flops = 0.0
    peaks = [peak]
    for gi, group in enumerate(groups):
        flops = sum(train_flops([len(engine.encode_example(a, b, cfg.train.max_seq_len)[0]) for a, b in plan.examples],
                                dims, cfg.lora.r, lora_io, plan.epochs or cfg.train.epochs) for plan in group)
        stats = engine.train(group, cfg.train, progress=False)
        floor = flops / peaks[-1]
        total_s += stats.seconds
        total_flops += flops
        print(f"| {gi} | {len(group)} | {stats.seconds:.1f} | {stats.steps} | {stats.tokens} | {stats.padded_tokens} | "
              f"{floor:.1f} | {floor / stats.seconds:.1%} |", flush=True)
        # Some machines' speed drifts by tens of percent within minutes (session 10's EPYC: 79.5-155.5 GFLOP/s): the
        # peak is re-measured after every group, and the totals use the highest (the lowest MFU it supports).
        peaks.append(measure_peak(loaded.device, train_dtype)["flops_per_s"])
    total_floor = total_flops / max(peaks)
    print(f"matmul peak measured {len(peaks)} times: {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f} GFLOP/s; "
          f"the total uses the highest (a row's floor and MFU use the one measured just before it)")
    print(f"total: {total_s:.1f} s wall, floor {total_floor:.1f} s")
    print(f"training MFU: {total_floor / total_s:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
