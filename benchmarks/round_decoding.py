"""The two decoding calls of a ReST-EM round, timed alone: sampling self-edits and answering questions.

sampling:  `k` self-edits for each of the first `passages` passages of a SQuAD file, in chunks of
           batch // k passages per `Engine.generate` call (what `sample_self_edit_units` sends to
           `SelfEditEvaluator.sample_self_edits`, default `hf` backend), top-p 0.95, `max-new-tokens`.
answering: the passages' questions asked to `slots` adapters per group (k adapters per passage, as an
           inner-loop group of `slots` self-edits; the adapters' B are random, so the answers are not
           meaningful but cost what trained adapters cost), at most `questions` per passage, greedy,
           32 tokens, batch 64 (the knowledge domain's answer settings), one `Engine.generate` call per group.

Prints wall seconds, generated tokens, tokens/s and a digest of the texts for each part, so two code
versions (PYTHONPATH at another checkout's src/) can be compared for speed and for identical output.
Run it on an idle machine.

    python benchmarks/round_decoding.py --data ../shared/data/squad/train.json --passages 16 --k 4
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time

import torch

from seal_lm.engine import Engine, GenerationConfig
from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.prompts import answer_prompt, self_edit_prompt
from seal_lm.models import EMBEDDED, load_model


def report(part: str, secs: float, n_tokens: int, texts: list[str]) -> None:
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
    print(f"{part}: {secs:.1f} s, {n_tokens} tokens, {n_tokens / secs:.1f} tokens/s, texts {digest}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo", help="a SQuAD-format file, or 'demo' (the shipped passages)")
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="self-edits (adapters) per passage")
    ap.add_argument("--slots", type=int, default=8, help="adapters per answering group")
    ap.add_argument("--questions", type=int, default=6,
                    help="questions per passage (at most; a round's 16 sampled train.json passages had 6 on average)")
    ap.add_argument("--max-new-tokens", type=int, default=160, help="of a self-edit")
    ap.add_argument("--batch", type=int, default=16, help="rows per sampling call")
    ap.add_argument("--part", choices=["sampling", "answering", "both"], default="both")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-stacked-decode", action="store_true",
                    help="one-token decoding steps take each adapter's rows as a slice (the path before "
                         "MultiLoRA.decoding), for an A/B in one checkout")
    ap.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="generation.compute_dtype of both parts (the model itself loads in fp32)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_stacked_decode:
        from seal_lm.lora import MultiLoRA

        MultiLoRA.decoding = contextlib.contextmanager(lambda self, slots: (yield))
    loaded = load_model(EMBEDDED, device="cpu", dtype=torch.float32)
    tok = loaded.tokenizer
    engine = Engine(loaded, n_slots=args.slots)
    # a checkout from before generation.compute_dtype decodes in the model's dtype (fp32) whatever is asked
    dtype = {"compute_dtype": args.compute_dtype} if "compute_dtype" in GenerationConfig.__dataclass_fields__ else {}
    passages = load_passages(args.data)[: args.passages]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}; "
          f"{len(passages)} passages x {args.k}; decoding dtype: {dtype or 'the model dtype (float32)'}", flush=True)

    if args.part in ("sampling", "both"):
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch, **dtype)
        per_call = max(1, args.batch // args.k)
        texts, n_tokens, t0 = [], 0, time.perf_counter()
        for c0 in range(0, len(passages), per_call):
            prompts = [self_edit_prompt(tok, p.title, p.context, "implications")
                       for p in passages[c0:c0 + per_call] for _ in range(args.k)]
            out, n = engine.generate(prompts, cfg, seed=c0)
            texts += out
            n_tokens += n
        report("sampling", time.perf_counter() - t0, n_tokens, texts)

    if args.part in ("answering", "both"):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _, m in engine.lora.modules:
                b = m.lora_B[: args.slots]
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)
        cfg = GenerationConfig(max_new_tokens=32, temperature=0.0, batch_size=64, **dtype)
        per_group = max(1, args.slots // args.k)
        texts, n_tokens, t0 = [], 0, time.perf_counter()
        for c0 in range(0, len(passages), per_group):
            prompts, adapters = [], []
            for i, p in enumerate(passages[c0:c0 + per_group]):
                for j in range(args.k):
                    for q in p.questions[: args.questions]:
                        prompts.append(answer_prompt(tok, q.question))
                        adapters.append(i * args.k + j)
            out, n = engine.generate(prompts, cfg, adapters=adapters)
            texts += out
            n_tokens += n
        report("answering", time.perf_counter() - t0, n_tokens, texts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
