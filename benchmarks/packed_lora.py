"""Packed LoRA (`lora._SegmentLoRA`) alone: forward + backward of one wrapped linear, by adapters per block.

A packed training step routes each adapter's token range through its own LoRA. `TokenRoute` groups the
adapters into blocks; a block is two plain matmuls over its tokens against its adapters' A and B side by
side, masked so each token keeps its own adapter's columns. One adapter per block is a loop over adapters
(many small matmuls); all adapters in one block is the fewest calls but the most wasted FLOPs (they grow
with the square of the adapter count). This times the choices at a ReST-EM step's shapes (SmolLM2-135M's
projections, r=16, each adapter a passage-or-line of 45-200 tokens plus a line) and an ARC-like one (r=128,
two adapters), in the training dtype, with gradients added in place as Engine.train does, and prints the LoRA's milliseconds on top of the bare linear's.
The `default` column is what training uses: `lora.adapters_per_block(r, dtype)` (BLOCK_COLUMNS // r in bf16,
FP32_BLOCK_COLUMNS // r in fp32).

    python benchmarks/packed_lora.py [--dtype bfloat16] [--reps 20]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from seal_lm.lora import BLOCK_COLUMNS, FP32_BLOCK_COLUMNS, TokenRoute, _SegmentLoRA, adapters_per_block


def lengths(n_adapters: int, seed: int = 0) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.choice([150, 40, 30, 60, 25]) + rnd.choice([40, 30, 20, 50]) for _ in range(n_adapters)]


def time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    dt = getattr(torch, args.dtype)
    torch.manual_seed(0)
    blocks = [1, 2, 4, 8, 16, 32]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; ms of LoRA on top of the bare "
          f"linear (forward + backward) by adapters per block; default = adapters_per_block "
          f"(BLOCK_COLUMNS {BLOCK_COLUMNS} // r in bf16, FP32_BLOCK_COLUMNS {FP32_BLOCK_COLUMNS} // r in fp32)")
    print("| adapters | r | in x out | tokens | bare linear ms | " + " | ".join(str(b) for b in blocks) + " | default |")
    print("|" + "---|" * (len(blocks) + 6))
    cases = [(k, 16, io) for k in (4, 8, 16, 32) for io in ((576, 576), (576, 192), (576, 1536), (1536, 576))]
    cases += [(2, 128, (576, 1536)), (2, 128, (1536, 576))]
    for k, r, (d_in, d_out) in cases:
        lens = lengths(k)
        t = sum(lens)
        segments, lo = [], 0
        for j, n in enumerate(lens):
            segments.append((j, lo, lo + n))
            lo += n
        a = torch.nn.Parameter(torch.randn(k + 1, r, d_in) * 0.02)
        b = torch.nn.Parameter(torch.randn(k + 1, d_out, r) * 0.02)
        w = (torch.randn(d_out, d_in) * 0.02).to(dt)
        x = torch.randn(1, t, d_in, dtype=dt, requires_grad=True)

        def bare():
            (x @ w.t()).sum().backward()

        def packed(per_block):
            route = TokenRoute.build(segments, t, "cpu", r, per_block)
            return lambda: _SegmentLoRA.apply(x @ w.t(), x, a, b, route, 2.0, True).sum().backward()

        base = time_ms(bare, args.reps)
        cells = [f"{time_ms(packed(p), args.reps) - base:.2f}" if p <= k else "" for p in blocks]
        default = time_ms(packed(adapters_per_block(r, dt)), args.reps) - base
        print(f"| {k} | {r} | {d_in}x{d_out} | {t} | {base:.2f} | " + " | ".join(cells) + f" | {default:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
