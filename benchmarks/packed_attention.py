"""Attention of one packed training pass, forward + backward of one layer, in three layouts.

A packed CPU training step runs each sequence's causal attention on its own (`engine._cpu_sdpa`: split,
upcast bf16 to fp32, transformers' SDPA per sequence, which repeats the key/value heads for GQA, then cat).
This times that against two alternatives at SmolLM2-135M's shapes (9 query heads, 3 key/value heads,
head dim 64) and a ReST-EM step's sequence lengths (self-edit lines and passages, 9-168 tokens):

- `padded`: the sequences gathered into one [n, heads, L_max, dim] batch, one causal SDPA call, scattered back;
- `native_gqa`: per sequence like `_cpu_sdpa`, but one upcast before the split and SDPA's own `enable_gqa`
  instead of repeated key/value heads.

    python benchmarks/packed_attention.py [--sequences 4,16,32] [--reps 20]
"""

from __future__ import annotations

import argparse
import random
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from seal_lm.engine import _cpu_sdpa

H, KV, D = 9, 3, 64
LENGTHS = [13, 25, 42, 39, 151, 57, 85, 28, 151, 9, 161, 151, 19, 70, 151, 15, 168, 85, 25, 64, 168]  # a real round's
MODULE = SimpleNamespace(num_key_value_groups=H // KV, is_causal=True, training=True, config=SimpleNamespace())


def current(q, k, v, lens):
    return _cpu_sdpa(MODULE, q, k, v, None, seal_seq_lengths=lens, scaling=D ** -0.5, dropout=0.0)[0]  # [1, T, H, D]


def padded(q, k, v, lens):
    n, L, T = len(lens), max(lens), sum(lens)
    starts = torch.tensor([0] + lens[:-1]).cumsum(0)
    pos = torch.arange(L)
    valid = pos[None, :] < torch.tensor(lens)[:, None]
    src = (starts[:, None] + pos[None, :]).clamp(max=T - 1)  # padding reads some real token; causality hides it

    def gather(t):  # [1, h, T, D] -> [n, h, L, D]
        return t[0].float().index_select(1, src.reshape(-1)).view(t.shape[1], n, L, D).transpose(0, 1)

    o = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), is_causal=True, enable_gqa=True, scale=D ** -0.5)
    return o.transpose(1, 2).reshape(n * L, H, D)[valid.reshape(-1)].to(q.dtype)[None]


def native_gqa(q, k, v, lens):
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    outs = [F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True, scale=D ** -0.5)
            for a, b, c in zip(q.split(lens, 2), k.split(lens, 2), v.split(lens, 2))]
    return torch.cat(outs, 2).transpose(1, 2).to(dtype)


def inputs(lens):
    T = sum(lens)
    return [torch.randn(1, h, T, D, dtype=torch.bfloat16, requires_grad=True) for h in (H, KV, KV)]


def time_ms(fn, lens, reps):
    q, k, v = inputs(lens)
    for _ in range(3):
        fn(q, k, v, lens).float().sum().backward()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(q, k, v, lens).float().sum().backward()
    return (time.perf_counter() - t0) / reps * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", default="4,16,32")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    rnd = random.Random(0)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per layer, forward + backward, bf16 inputs")
    print("| sequences | tokens | longest | current | padded | native_gqa | max diff vs current |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sequences.split(",")):
        lens = [rnd.choice(LENGTHS) for _ in range(n)]
        q, k, v = inputs(lens)
        with torch.no_grad():
            ref = current(q, k, v, lens).float()
            diff = max((f(q, k, v, lens).float() - ref).abs().max().item() for f in (padded, native_gqa))
        row = [time_ms(f, lens, args.reps) for f in (current, padded, native_gqa)]
        print(f"| {n} | {sum(lens)} | {max(lens)} | " + " | ".join(f"{x:.2f}" for x in row) + f" | {diff:.2g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
