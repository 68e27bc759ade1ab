"""Wall time of finished ReST-EM rounds (`seal knowledge train`) against their compute floor.

Reads a run directory (config.yaml, units.jsonl, round-<i>/summary.json, sft.jsonl), rebuilds every
training sequence the round trained on (the recorded self-edits through the same domain code), and
prints per round:

    floor = (inner-loop training FLOPs + generator-SFT FLOPs) / measured matmul peak of the training dtype
          + prompt prefill FLOPs / measured matmul peak of the decoding dtype
          + (self-edit tokens + answer tokens) / measured raw decode rate in the decoding dtype

(the training dtype is the run's train.compute_dtype, the decoding dtype its generation.compute_dtype:
bf16 on a CPU with native bf16 matmuls, whose peak is ~4.6x fp32's, so the floor of such a run is far
lower than an fp32 run's; a run whose config predates generation.compute_dtype gets its default, auto)

with the FLOP accounting of benchmarks/inner_loop.py (useful FLOPs only: no padding, frozen base). Prefill
is the forward pass over every distinct prompt (a passage's self-edit prompt once: its k samples share it;
every answer prompt of every adapter) before its first new token; the
raw decode rate is measured with one-token cached forward steps at 64 rows (the fastest rate of this
machine's decoders: HF at 64 rows beats llama.cpp's single stream, see RESULTS), whatever batch the run used.
The last line is `round/floor: N.Nx` for the slowest round. Run it on an idle machine: the peak and the
decode rate are measured here (best of --repeats, default 3), not taken from the run.

    python benchmarks/round_floor.py runs/rl2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inner_loop import load_knowledge_run, lora_in_out_sum, measure_decode_rate, measure_peak, model_dims, train_flops  # noqa: E402

from seal_lm.engine import Engine, resolve_compute_dtype  # noqa: E402
from seal_lm.knowledge.prompts import answer_prompt  # noqa: E402


def sft_flops(rows: list[tuple[int, int]], dims: dict, r: int, lora_io: int, epochs: int) -> float:
    """Generator SFT: (prompt tokens, completion tokens) per row; the LM head runs on completion positions only."""
    f = 0.0
    for p, c in rows:
        s = p + c
        f += 4.0 * dims["n_nonemb"] * s + 6.0 * r * lora_io * s + 12.0 * dims["layers"] * dims["attn_dim"] * s * (s + 1) / 2
        f += 4.0 * dims["hidden"] * dims["vocab"] * c
    return f * epochs


def prefill_flops(prompt_lens: list[int], dims: dict, r: int = 0, lora_io: int = 0) -> float:
    """Forward over prompts (logits only at the last position; LoRA when the rows carry an adapter)."""
    return sum(2.0 * dims["n_nonemb"] * s + 2.0 * r * lora_io * s + 4.0 * dims["layers"] * dims["attn_dim"] * s * (s + 1) / 2
               + 2.0 * dims["hidden"] * dims["vocab"] for s in prompt_lens)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a `seal knowledge train` run directory")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="measure the peak and decode rates this many times; use the best")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg, units, passages, domain, loaded = load_knowledge_run(run)
    tok = loaded.tokenizer
    dims = model_dims(loaded.model)
    lora_io = lora_in_out_sum(loaded.model, set(cfg.lora.target_modules))
    dev = loaded.device
    print(f"load average {os.getloadavg()}; measuring matmul peak and decode rates ...", flush=True)
    engine = Engine(loaded, n_slots=1, lora=cfg.lora)
    model_dtype = next(loaded.model.parameters()).dtype
    train_dtype = resolve_compute_dtype(cfg.train.compute_dtype, model_dtype, dev)
    decode_dtype = resolve_compute_dtype(cfg.generation.compute_dtype, model_dtype, dev)
    decoder = engine.compute_model(cfg.generation.compute_dtype)
    # Best of --repeats measurements: some machines' speed drifts by tens of percent within minutes (session 10's
    # EPYC: fp32 peak 79.5-155.5 GFLOP/s), and the fastest rate seen gives the lowest floor (the least flattering ratio).
    peak = max(measure_peak(dev, decode_dtype)["flops_per_s"] for _ in range(args.repeats))  # prefill: decoding dtype
    train_peak = peak if train_dtype == decode_dtype else \
        max(measure_peak(dev, train_dtype)["flops_per_s"] for _ in range(args.repeats))
    q_lens_of: dict[str, list[int]] = {}

    def question_lens(p) -> list[int]:
        """Token lengths of p's answer prompts (tokenized once per passage, not once per evaluation)."""
        if p.passage_id not in q_lens_of:
            q_lens_of[p.passage_id] = [len(tok(answer_prompt(tok, q.question), add_special_tokens=False)["input_ids"])
                                       for q in p.questions]
        return q_lens_of[p.passage_id]
    rows = []
    worst = 0.0
    for rdir in sorted(run.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        rnd = int(rdir.name.split("-")[1])
        if not (rdir / "summary.json").exists():
            continue
        summary = json.loads((rdir / "summary.json").read_text())
        inner, se_tokens, ans_tokens, n_evals, se_prompt, prefill = 0.0, 0, 0, 0, [], 0.0
        spent = dict(sampling=0.0, training=0.0, answering=0.0, sft=0.0)  # the run's own timings, summed
        for key, rec in units.items():
            if not key.startswith(f"r{rnd}/"):
                continue
            parts = key.split("/")
            if parts[1] == "gen":
                spent["sampling"] += rec.get("generate_s", 0.0)
                p = passages[parts[2]]
                se_tokens += sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in rec["self_edits"])
                se_prompt.append(len(tok(domain.self_edit_prompt(tok, p), add_special_tokens=False)["input_ids"]))
                prefill += prefill_flops([se_prompt[-1]], dims)  # once: the k samples share the prompt
            elif parts[1] == "eval":
                spent["training"] += rec.get("train_s", 0.0)
                spent["answering"] += rec.get("answer_s", 0.0)
                p = passages[parts[2]]
                for a in rec.get("details", {}).get("answers", []):
                    ans_tokens += len(tok(a if isinstance(a, str) else str(a.get("prediction", "")),
                                          add_special_tokens=False)["input_ids"]) + 1
                if not rec.get("valid", True):
                    continue
                q_lens = question_lens(p)
                adapted = parts[3] != "base"
                prefill += prefill_flops(q_lens, dims, cfg.lora.r if adapted else 0, lora_io if adapted else 0)
                if not adapted:
                    continue
                text = units[f"r{rnd}/gen/{parts[2]}"]["self_edits"][int(parts[3])]
                plan = domain.training_plan(p, text, int(parts[4][1:]))
                lens = [len(engine.encode_example(a, b, cfg.train.max_seq_len)[0]) for a, b in plan.examples]
                inner += train_flops(lens, dims, cfg.lora.r, lora_io, plan.epochs or cfg.train.epochs)
                n_evals += 1
        if (rdir / "sft_info.json").exists():
            spent["sft"] = json.loads((rdir / "sft_info.json").read_text()).get("sft_s", 0.0)
        sft = []
        if (rdir / "sft.jsonl").exists():
            for line in (rdir / "sft.jsonl").read_text().splitlines():
                r = json.loads(line)
                sft.append((len(tok(r["prompt"], add_special_tokens=False)["input_ids"]),
                            len(tok(r["completion"], add_special_tokens=False)["input_ids"]) + 1))
        sft_f = sft_flops(sft, dims, cfg.sft_lora.r, lora_in_out_sum(loaded.model, set(cfg.sft_lora.target_modules)),
                          cfg.sft.epochs)
        ctx = int(sum(se_prompt) / max(len(se_prompt), 1) + cfg.generation.max_new_tokens / 2)
        rate_se = max(measure_decode_rate(decoder, 64, ctx, dev) for _ in range(args.repeats))
        q_prompt = int(sum(len(tok(answer_prompt(tok, q.question), add_special_tokens=False)["input_ids"])
                           for p in passages.values() for q in p.questions[:2]) / (2 * len(passages)) + 16)
        rate_ans = max(measure_decode_rate(decoder, 64, q_prompt, dev) for _ in range(args.repeats))
        floor = (inner + sft_f) / train_peak + prefill / peak + se_tokens / rate_se + ans_tokens / rate_ans
        wall = summary["seconds"]
        worst = max(worst, wall / floor)
        rows.append((rnd, n_evals, wall, floor, inner / train_peak, sft_f / train_peak, prefill / peak, se_tokens / rate_se,
                     ans_tokens / rate_ans, spent))
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s ({decode_dtype}: prefill), {train_peak / 1e9:.1f} GFLOP/s "
          f"({train_dtype}: inner training and SFT); torch threads {torch.get_num_threads()}")
    print("| round | evaluations | wall s | floor s | floor: inner train | SFT | prompt prefill | self-edit decode | answer decode | wall/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rnd, n, wall, floor, a, b, pf, c, d, _ in rows:
        print(f"| {rnd} | {n} | {wall:.0f} | {floor:.0f} | {a:.0f} | {b:.0f} | {pf:.0f} | {c:.0f} | {d:.0f} | {wall / floor:.2f}x |")
    # Where the wall time went, from the run's unit records (with a processes or Ray executor these are worker
    # seconds, which overlap in wall time; units copied from another run count that run's seconds)
    print("| round | sampling s | inner training s | answering s | generator SFT s (load+train+save) |")
    print("|---|---|---|---|---|")
    for rnd, *_, spent in rows:
        print(f"| {rnd} | {spent['sampling']:.1f} | {spent['training']:.1f} | {spent['answering']:.1f} | {spent['sft']:.1f} |")
    print(f"round/floor: {worst:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
