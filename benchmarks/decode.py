"""Decode speed of the embedded model: HF generate (dynamic / static KV cache, batch 1 and batched) vs llama.cpp.

The inner loop decodes twice per self-edit evaluation: the self-edit itself (sampled, ~100-250 tokens)
and the answers to the passage's questions (greedy, <= 32 tokens each). Both are batched in the engine
(all K self-edits of a passage, all questions of all adapters). This script measures generated tokens/s
on the same self-edit prompts for:

  hf dynamic  b=1 / b=B   transformers `generate`, default DynamicCache (what Engine.generate uses)
  hf static   b=1 / b=B   `cache_implementation="static"` (preallocated cache; no torch.compile on CPU)
  engine      b=B         seal-lm's own decoder (`Engine._decode`: in-place KV cache, one prefill per distinct
                          prompt) in fp32 and in bf16 (the bf16 twin, generation.compute_dtype auto on a CPU
                          with native bf16 matmuls)
  llama.cpp   b=1         llama-cpp-python on the embedded Q4_1 GGUF itself (if installed)

Every run generates exactly N new tokens per row (EOS suppressed), so rates compare like for like.
The last line is `best: <mode> <tokens/s>`.

    python benchmarks/decode.py --new-tokens 128 --batch 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.prompts import self_edit_prompt
from seal_lm.models import EMBEDDED, embedded_gguf_path, load_model


def hf_rate(model, tok, prompts: list[str], new: int, static: bool) -> float:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=0.95,
              pad_token_id=tok.pad_token_id)
    if static:
        kw["cache_implementation"] = "static"
    torch.manual_seed(0)
    model.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up (allocations)
    t0 = time.perf_counter()
    out = model.generate(**enc, **kw)
    dt = time.perf_counter() - t0
    return (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts) / dt


def engine_rate(engine, prompts: list[str], new: int, dtype: str) -> float:
    from seal_lm.engine import GenerationConfig

    tok = engine.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    cfg = GenerationConfig(max_new_tokens=new, temperature=1.0, top_p=0.95, compute_dtype=dtype)
    model = engine.compute_model(dtype)
    torch.manual_seed(0)
    # no end tokens: every row generates exactly `new` tokens, like the other modes
    engine._decode(enc["input_ids"], enc["attention_mask"], None, GenerationConfig(max_new_tokens=4), set(), model=model)
    t0 = time.perf_counter()
    out = engine._decode(enc["input_ids"], enc["attention_mask"], None, cfg, set(), model=model)
    dt = time.perf_counter() - t0
    return sum(len(o) for o in out) / dt


def llama_cpp_rate(prompt: str, new: int, threads: int) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=2048, n_threads=threads, verbose=False, seed=0)
    eos = llm.token_eos()
    llm.create_completion(prompt, max_tokens=4, temperature=1.0, top_p=0.95, logit_bias={eos: -1e9})
    t0 = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=new, temperature=1.0, top_p=0.95, logit_bias={eos: -1e9})
    dt = time.perf_counter() - t0
    return out["usage"]["completion_tokens"] / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="B: rows of the batched runs (the engine's default 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch / llama.cpp threads (default: all cores)")
    ap.add_argument("--skip-static", action="store_true")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    loaded = load_model(EMBEDDED, device="cpu", dtype=torch.float32)
    tok, model = loaded.tokenizer, loaded.model
    passages = load_passages("demo")
    prompts = [self_edit_prompt(tok, p.title, p.context, "implications") for p in passages]
    prompts = (prompts * args.batch)[: args.batch]
    n_prompt = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    print(f"torch {torch.__version__}, {threads} threads, load {os.getloadavg()}; prompt ~{n_prompt} tokens, "
          f"{args.new_tokens} new tokens per row", flush=True)
    rows = []
    for static in ([False] if args.skip_static else [False, True]):
        for b in (1, args.batch):
            name = f"hf {'static' if static else 'dynamic'} b={b}"
            try:
                r = hf_rate(model, tok, prompts[:b], args.new_tokens, static)
            except Exception as e:  # a transformers version without static cache for this model
                print(f"{name}: failed ({type(e).__name__}: {e})")
                continue
            rows.append((name, r))
            print(f"{name}: {r:.1f} tokens/s", flush=True)
    from seal_lm.engine import Engine

    engine = Engine(loaded, n_slots=1)
    for dtype in ("float32", "bfloat16"):
        name = f"engine {dtype} b={args.batch}"
        r = engine_rate(engine, prompts[: args.batch], args.new_tokens, dtype)
        rows.append((name, r))
        print(f"{name}: {r:.1f} tokens/s", flush=True)
    r = llama_cpp_rate(prompts[0], args.new_tokens, threads)
    if r is None:
        print("llama.cpp b=1: llama-cpp-python not installed (pip install llama-cpp-python builds it, ~5 min)")
    else:
        rows.append(("llama.cpp b=1", r))
        print(f"llama.cpp b=1: {r:.1f} tokens/s", flush=True)
    print("| mode | generated tokens/s |\n|---|---|")
    for name, r in rows:
        print(f"| {name} | {r:.1f} |")
    best = max(rows, key=lambda x: x[1])
    print(f"best: {best[0]} {best[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
