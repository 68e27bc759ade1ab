#!/usr/bin/env python
"""Inner-loop benchmark: our batched SEAL inner loop vs. a loop built like the paper's TTT server.

Both loops run in one process on the same model, the same passages and the SAME self-edit texts
(sampled once, or read from --self-edits-from), with the same LoRA shape and training
hyperparameters. What is timed is one *self-edit evaluation*: self-edit -> LoRA update -> answer
the passage's questions closed-book -> grade.

Ours (seal_lm.engine.Engine, what seal_lm.inner_loop.SelfEditEvaluator runs):
  * the K self-edits of all P passages are sampled in ONE batched Engine.generate call;
  * per passage, the K adapters are trained together with Engine.train (n_slots=K: one
    forward/backward per step for all K adapters, sequences padded only to the batch's longest);
  * the K x Q questions are answered in ONE batched greedy Engine.generate, each row through its
    own adapter; then graded.

Reference (as SEAL's knowledge-incorporation/src/inner/TTT_server.py does it, one self-edit at a time):
  * peft.get_peft_model(model, LoraConfig(same r / alpha / target modules, dropout 0));
  * transformers.Trainer, per_device_train_batch_size=1, every sequence padded to 2048 tokens
    (labels = input_ids with the padding masked to -100);
  * model.save_pretrained(tmpdir) (the adapter), unload, PeftModel.from_pretrained(base, tmpdir)
    (the paper hands the saved adapter to vLLM; the base stays resident; --ref-reload-base also
    reloads the base weights from disk each time);
  * HF generate, greedy, batch 1 per question; grade.
  The training sequences are byte-identical to ours (same token ids), and so are the learning rate,
  epochs, LoRA init, constant schedule, grad clip 1.0, AdamW betas/eps and weight decay. Only the
  shuffle order inside each epoch differs (HF's sampler vs our per-adapter seed).

Headline: `speedup` = reference mean seconds per self-edit evaluation / ours. Ours includes its
share of the batched self-edit sampling (the reference gets its self-edits for free, as the paper's
TTT server receives them from vLLM), so the headline understates the like-for-like ratio, which is
printed too ("speedup (train+answer+grade only)").

FLOP accounting (documented here, used for MFU and the compute floor), per training sequence of
s real tokens (no padding counted; the base is frozen):
  dense   = 4 * N * s           N = non-embedding parameters of the base (every nn.Linear in the
                                decoder + norms; embeddings and the LM head excluded): forward 2N,
                                backward input-gradients 2N (no weight gradients: frozen base)
  head    = 4 * H * V * (s-1)   LM head (H = hidden, V = vocab) on the s-1 positions that carry a
                                label: forward 2HV + backward input-gradient 2HV
  lora    = 6 * r * sum(in+out) * s   over all adapted linears: forward 2r(in+out), backward input
                                grads 2r(in+out) + weight grads 2r(in+out)
  attn    = 3 * 4 * L * (heads*head_dim) * s(s+1)/2   causal QK^T and AV (forward 4*d*ctx per token
                                per layer, backward 2x forward)
MFU = these FLOPs / measured train seconds / measured matmul peak. The peak is the best of several
runs of a large torch.mm in the dtype training computes in (fp32 2048^2 on CPU, 8192^2 on CUDA; bf16
when --compute-dtype resolves to it, e.g. `auto` on a CPU with AVX512-BF16, where it is ~4.6x fp32's).
The reference's *hardware* FLOPs are far larger (2048-token padding, LM head over all positions);
its MFU below is "useful MFU": the same useful FLOPs over its own (longer) time.

Compute floor per evaluation = training FLOPs / peak  +  generated tokens / measured decode rate,
where the decode rate is the raw throughput of the base model's cached one-token forward steps at
the batch size (and context length) each generate call used, without HF generate's loop overhead, in
the dtype ours decodes in (generation.compute_dtype auto: the bf16 twin on a CPU with native bf16).

Run:  python benchmarks/inner_loop.py --passages 2 --k 5 --epochs 10 --ref-evals 2
On a CPU shared with other busy processes, set OMP_WAIT_POLICY=PASSIVE (or --threads 1): spinning
OpenMP barriers otherwise slow the many small ops of Engine.train ~10x, much more than the
reference's few large ones. The 1-minute load average seen while each loop ran is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import torch

from seal_lm.engine import Engine, GenerationConfig, TrainConfig, TrainPlan, resolve_compute_dtype
from seal_lm.knowledge.data import Passage, load_passages
from seal_lm.knowledge.prompts import answer_prompt, self_edit_prompt
from seal_lm.knowledge.self_edits import training_sequences
from seal_lm.lora import DEFAULT_TARGETS, LoRAConfig
from seal_lm.models import EMBEDDED, load_model

REF_MAX_LEN = 2048  # the paper's TTT server pads every training sequence to this length
T_START = time.perf_counter()


# ----------------------------------------------------------------------------- small helpers
def log(msg: str) -> None:
    load = os.getloadavg()
    print(f"[{time.perf_counter() - T_START:7.1f}s load {load[0]:.2f}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LoadSampler:
    """Samples the 1-minute load average every few seconds, tagged with the current phase, so the
    report can say how busy the machine was while each loop ran (the CPU may be shared)."""

    def __init__(self, every_s: float = 5.0):
        import threading

        self.phase = "setup"
        self.samples: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append((self.phase, os.getloadavg()[0]))

    def summary(self, phase: str) -> str:
        xs = [x for ph, x in self.samples if ph == phase]
        return f"{statistics.fmean(xs):.2f} mean / {max(xs):.2f} max" if xs else "n/a"

    def stop(self) -> None:
        self._stop.set()


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.s = time.perf_counter() - self.t0


def make_grader():
    """(grade(items) -> list[bool|None], GradeItem, description). The project's LocalGrader when it
    exists, else a normalized-containment grader with the same interface."""
    try:
        from seal_lm.knowledge.grading import GradeItem, LocalGrader  # noqa: F401

        g = LocalGrader()
        return g.grade, GradeItem, "seal_lm.knowledge.grading.LocalGrader"
    except Exception as e:  # not written yet / different API
        from dataclasses import dataclass

        @dataclass
        class GradeItem:  # same fields as seal_lm.knowledge.grading.GradeItem
            question: str
            gold: str
            prediction: str

        def norm(t: str) -> str:
            t = t.lower()
            t = "".join(ch for ch in t if ch not in set(string.punctuation))
            t = re.sub(r"\b(a|an|the)\b", " ", t)
            return " ".join(t.split())

        def grade(items):
            return [bool(norm(it.gold)) and norm(it.gold) in norm(it.prediction) for it in items]

        return grade, GradeItem, f"normalized containment (LocalGrader unavailable: {type(e).__name__})"


# ----------------------------------------------------------------------------- FLOPs & peaks
def model_dims(model) -> dict:
    cfg = model.config
    n_nonemb = 0
    for name, p in model.named_parameters():
        if "lora_" in name or "embed_tokens" in name or "lm_head" in name:
            continue
        n_nonemb += p.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return dict(n_nonemb=n_nonemb, hidden=cfg.hidden_size, vocab=cfg.vocab_size, layers=cfg.num_hidden_layers,
                attn_dim=cfg.num_attention_heads * head_dim)


def lora_in_out_sum(model, targets) -> int:
    """sum(in + out) over the nn.Linear (or already-wrapped) modules an adapter attaches to."""
    total = 0
    for name, m in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in targets:
            base = getattr(m, "base", m)
            if isinstance(base, torch.nn.Linear):
                total += base.in_features + base.out_features
    return total


def train_flops(seq_lens: list[int], dims: dict, r: int, lora_io: int, epochs: int) -> float:
    """Useful training FLOPs for `epochs` passes over sequences of the given real lengths (see module doc)."""
    f = 0.0
    for s in seq_lens:
        f += 4.0 * dims["n_nonemb"] * s
        f += 4.0 * dims["hidden"] * dims["vocab"] * max(s - 1, 0)
        f += 6.0 * r * lora_io * s
        f += 12.0 * dims["layers"] * dims["attn_dim"] * s * (s + 1) / 2
    return f * epochs


def load_knowledge_run(run_dir: Path, dtype: str | None = None, compute_dtype: str | None = None):
    """A finished `seal knowledge train` run as the round benchmarks need it: (config, units, passages by
    id, domain, loaded model). dtype / compute_dtype override the run's; a run made before
    train.compute_dtype existed trained in the model's dtype (a missing field would otherwise read as
    today's default, auto)."""
    import yaml

    from seal_lm.config import from_dict
    from seal_lm.knowledge.domain import KnowledgeDomain
    from seal_lm.knowledge.train import KnowledgeTrainConfig
    from seal_lm.runs import read_units

    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = from_dict(KnowledgeTrainConfig, raw)
    cfg.dtype = dtype or cfg.dtype
    cfg.train.compute_dtype = (compute_dtype or (raw.get("train") or {}).get("compute_dtype")
                               or cfg.dtype or "float32")
    units = read_units(run_dir / "units.jsonl")
    passages = {p.passage_id: p for p in load_passages(cfg.data)}
    domain = KnowledgeDomain.from_config(cfg, run_dir)
    return cfg, units, passages, domain, load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def measure_peak(device: torch.device, dtype: torch.dtype, trials: int = 5) -> dict:
    n = 2048 if device.type == "cpu" else 8192
    reps = 4 if device.type == "cpu" else 20
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    sync(device)
    best = float("inf")
    for _ in range(trials):
        with Timer(device) as t:
            for _ in range(reps):
                torch.mm(a, b, out=c)
        best = min(best, t.s)
    del a, b, c
    return dict(flops_per_s=2.0 * n ** 3 * reps / best, n=n, reps=reps, dtype=str(dtype).replace("torch.", ""))


@torch.no_grad()
def measure_decode_rate(model, batch: int, ctx: int, device: torch.device, steps: int = 16) -> float:
    """Generated tokens/s of raw cached one-token forward steps (greedy), batch rows, ~ctx context."""
    import inspect

    # transformers >= 5.2x calls the KV cache `cache`; older versions `past_key_values`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    vocab = model.config.vocab_size
    ids = torch.randint(100, vocab - 1, (batch, max(ctx, 1)), device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(2):  # warm-up
        out = model(input_ids=nxt, use_cache=True, **{key: cache})
        nxt = out.logits[:, -1:].argmax(-1)
    with Timer(device) as t:
        for _ in range(steps):
            out = model(input_ids=nxt, use_cache=True, **{key: cache})
            nxt = out.logits[:, -1:].argmax(-1)
    return batch * steps / t.s


# ----------------------------------------------------------------------------- self-edits
def load_self_edits(path: str, passages: list[Passage], k: int) -> list[list[str]]:
    """--self-edits-from: this script's --json output, {passage_id or title: [texts]}, or SEAL JSON
    records with `completions`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "self_edits" in data:
        data = data["self_edits"]
    table: dict[str, list[str]] = {}
    if isinstance(data, list):
        for rec in data:
            if isinstance(rec, dict) and rec.get("completions"):
                for key in (rec.get("passage_id"), rec.get("title")):
                    if key:
                        table[key] = list(rec["completions"])
    elif isinstance(data, dict):
        table = {key: ([v] if isinstance(v, str) else list(v)) for key, v in data.items()}
    out = []
    for p in passages:
        edits = table.get(p.passage_id) or table.get(p.title)
        if not edits:
            raise SystemExit(f"{path}: no self-edits for passage {p.passage_id!r}")
        if len(edits) < k:
            raise SystemExit(f"{path}: passage {p.passage_id!r} has {len(edits)} self-edits, --k is {k}")
        out.append(edits[:k])
    return out


# ----------------------------------------------------------------------------- the two loops
def run_ours(args, engine: Engine, passages, self_edits, gen_s, gen_tokens, tcfg, grade, GradeItem):
    dev = engine.device
    ans_cfg = GenerationConfig(max_new_tokens=args.answer_tokens, temperature=0.0, batch_size=64)
    per_passage = []
    for pi, (p, edits) in enumerate(zip(passages, self_edits)):
        seqs = [training_sequences(p.title, p.context, e, max_sequences=args.max_sequences) for e in edits]
        plans = [TrainPlan(examples=[("", s) for s in ss], seed=k) for k, ss in enumerate(seqs)]
        log(f"ours: passage {pi + 1}/{len(passages)}: training {len(plans)} adapters together "
            f"({[len(s) for s in seqs]} sequences)")
        with Timer(dev) as t_train:
            stats = engine.train(plans, tcfg, progress=False)
        prompts, adapters, golds = [], [], []
        for k in range(len(plans)):
            for q in p.questions:
                prompts.append(answer_prompt(engine.tokenizer, q.question))
                adapters.append(k)
                golds.append(q)
        with Timer(dev) as t_ans:
            answers, n_ans_tok = engine.generate(prompts, ans_cfg, adapters=adapters)
        items = [GradeItem(q.question, q.answer, a.strip()) for q, a in zip(golds, answers)]
        with Timer(dev) as t_grade:
            verdicts = grade(items)
        nq = len(p.questions)
        evals = []
        for k in range(len(plans)):
            v = verdicts[k * nq:(k + 1) * nq]
            judged = [x for x in v if x is not None]
            evals.append(dict(
                passage=pi, k=k, n_sequences=len(seqs[k]),
                seq_tokens=[len(engine.encode_example("", s, tcfg.max_seq_len)[0]) for s in seqs[k]],
                accuracy=sum(judged) / len(judged) if judged else None,
                mean_loss=statistics.fmean(stats.losses[k]) if stats.losses[k] else None,
                final_loss=stats.losses[k][-1] if stats.losses[k] else None,
                answers=answers[k * nq:(k + 1) * nq]))
        per_passage.append(dict(train_s=t_train.s, engine_train_s=stats.seconds, answer_s=t_ans.s,
                                grade_s=t_grade.s, steps=stats.steps, tokens=stats.tokens,
                                trained_tokens=stats.trained_tokens, answer_tokens=n_ans_tok,
                                answer_rows=len(prompts), evals=evals))
        log(f"ours: passage {pi + 1}: train {t_train.s:.2f}s ({stats.steps} steps, {stats.tokens} real tokens), "
            f"answer {t_ans.s:.2f}s ({n_ans_tok} tokens), grade {t_grade.s:.3f}s, "
            f"acc {[round(e['accuracy'], 2) if e['accuracy'] is not None else None for e in evals]}")
    return per_passage


def run_reference(args, passages, self_edits, tcfg, targets, grade, GradeItem, encode, device, dtype):
    """One self-edit at a time, as SEAL's TTT server: peft + HF Trainer + save/reload + HF generate."""
    import warnings

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    with Timer(device) as t_load:
        loaded = load_model(args.model, device=device, dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    log(f"reference: loaded a second copy of the model in {t_load.s:.1f}s")
    pad = tok.pad_token_id
    jobs = [(pi, k) for pi in range(len(passages)) for k in range(args.k)][: args.ref_evals]
    results = []
    root = Path(tempfile.mkdtemp(prefix="seal-bench-ref-"))
    try:
        for j, (pi, k) in enumerate(jobs):
            p = passages[pi]
            seqs = training_sequences(p.title, p.context, self_edits[pi][k], max_sequences=args.max_sequences)
            n_steps = len(seqs) * args.epochs
            log(f"reference: eval {j + 1}/{len(jobs)} (passage {pi}, self-edit {k}): {len(seqs)} sequences x "
                f"{args.epochs} epochs = {n_steps} steps of batch 1 x {REF_MAX_LEN} tokens")
            tmp = root / f"eval{j}"
            out = dict(passage=pi, k=k, n_sequences=len(seqs))
            with Timer(device) as t_setup:
                rows, real = [], 0
                for s in seqs:
                    ids, labels = encode(s)  # the exact token ids ours trains on
                    ids, labels = ids[:REF_MAX_LEN], labels[:REF_MAX_LEN]
                    n_pad = REF_MAX_LEN - len(ids)
                    real += len(ids)
                    rows.append(dict(
                        input_ids=torch.tensor(ids + [pad] * n_pad),
                        attention_mask=torch.tensor([1] * len(ids) + [0] * n_pad),
                        labels=torch.tensor(labels + [-100] * n_pad)))
                lcfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0,
                                  target_modules=list(targets), task_type="CAUSAL_LM")
                peft_model = get_peft_model(model, lcfg)
                targs = TrainingArguments(
                    output_dir=str(tmp / "trainer"), per_device_train_batch_size=1,
                    gradient_accumulation_steps=1, num_train_epochs=args.epochs, learning_rate=args.lr,
                    lr_scheduler_type="constant" if tcfg.lr_schedule == "constant" else "linear",
                    warmup_steps=0, weight_decay=tcfg.weight_decay, max_grad_norm=tcfg.grad_clip,
                    adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
                    report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                    remove_unused_columns=False, label_names=["labels"], seed=k,
                    use_cpu=device.type == "cpu", dataloader_num_workers=0,
                    # the same training precision as ours: bf16 (autocast over the model's weights when
                    # they are fp32, as HF does on a CPU) whenever our compute dtype resolves to bf16
                    bf16=resolve_compute_dtype(tcfg.compute_dtype, dtype, device) == torch.bfloat16, fp16=False)
                trainer = Trainer(model=peft_model, args=targs, train_dataset=rows,
                                  data_collator=default_data_collator)
                trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
            with Timer(device) as t_train:
                train_out = trainer.train()
            with Timer(device) as t_save:
                peft_model.save_pretrained(str(tmp / "adapter"))
                model = peft_model.unload()  # the bare base again (LoRA layers removed)
                del trainer, peft_model
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if args.ref_reload_base:
                    del model
                    gc.collect()
                    model = load_model(args.model, device=device, dtype=dtype).model
                answer_model = PeftModel.from_pretrained(model, str(tmp / "adapter"))
                answer_model.eval()
            answers = []
            with Timer(device) as t_ans:
                n_ans_tok = 0
                for q in p.questions:
                    enc = tok(answer_prompt(tok, q.question), return_tensors="pt", add_special_tokens=False).to(device)
                    with torch.no_grad():
                        gen = answer_model.generate(**enc, max_new_tokens=args.answer_tokens, do_sample=False,
                                                    temperature=None, top_p=None, top_k=None,
                                                    pad_token_id=pad, eos_token_id=tok.eos_token_id)
                    toks = gen[0, enc["input_ids"].shape[1]:].tolist()
                    if tok.eos_token_id in toks:
                        toks = toks[: toks.index(tok.eos_token_id)]
                    n_ans_tok += len(toks)
                    answers.append(tok.decode(toks, skip_special_tokens=True))
            items = [GradeItem(q.question, q.answer, a.strip()) for q, a in zip(p.questions, answers)]
            with Timer(device) as t_grade:
                verdicts = grade(items)
            model = answer_model.unload()
            del answer_model
            shutil.rmtree(tmp, ignore_errors=True)
            judged = [x for x in verdicts if x is not None]
            out.update(setup_s=t_setup.s, train_s=t_train.s, save_reload_s=t_save.s, answer_s=t_ans.s,
                       grade_s=t_grade.s, steps=n_steps, real_tokens=real * args.epochs,
                       padded_tokens=REF_MAX_LEN * len(seqs) * args.epochs, answer_tokens=n_ans_tok,
                       mean_loss=float(train_out.training_loss),
                       accuracy=sum(judged) / len(judged) if judged else None, answers=answers)
            out["total_s"] = t_setup.s + t_train.s + t_save.s + t_ans.s + t_grade.s
            results.append(out)
            log(f"reference: eval {j + 1}: setup {t_setup.s:.2f}s, train {t_train.s:.1f}s "
                f"({t_train.s / max(n_steps, 1):.2f}s/step), save+reload {t_save.s:.2f}s, answer {t_ans.s:.2f}s, "
                f"acc {out['accuracy']}, mean loss {out['mean_loss']:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    del model
    gc.collect()
    return results


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED, help="model name for seal_lm.models.load_model "
                    f"(default {EMBEDDED}; random:{EMBEDDED} for random weights of the same architecture)")
    ap.add_argument("--data", default="demo", help="passages: 'demo' (packaged) or a SEAL/SQuAD JSON file")
    ap.add_argument("--passages", type=int, default=2, help="P: passages used (default 2)")
    ap.add_argument("--k", type=int, default=5, help="K: self-edits per passage (default 5)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs per self-edit (paper: 10)")
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (paper: 1e-3)")
    ap.add_argument("--r", type=int, default=32, help="LoRA rank (paper: 32)")
    ap.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha (paper: 64)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="self-edit length in tokens (default 128)")
    ap.add_argument("--answer-tokens", type=int, default=32, help="max new tokens of an answer (default 32)")
    ap.add_argument("--max-sequences", type=int, default=32, help="cap on training lines per self-edit "
                    "(KnowledgeDomain default 32)")
    ap.add_argument("--ref-evals", type=int, default=2, help="reference self-edit evaluations to time (default 2; "
                    "each is slow). 0 skips the reference")
    ap.add_argument("--ref-reload-base", action="store_true", help="reference also reloads the base weights from "
                    "disk for every evaluation (off: the base stays resident, as vLLM's does in the paper)")
    ap.add_argument("--self-edits-from", default=None, help="JSON with fixed self-edits (this script's --json "
                    "output, {passage_id|title: [texts]}, or SEAL records with 'completions')")
    ap.add_argument("--seed", type=int, default=0, help="self-edit sampling seed (default 0)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--compute-dtype", default="auto",
                    help="dtype of the training passes (TrainConfig.compute_dtype; both loops use it)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="write every number (and the self-edits, answers) here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load0 = os.getloadavg()
    sampler = LoadSampler()
    omp_policy = os.environ.get("OMP_WAIT_POLICY", "default")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY {omp_policy}, "
        f"cpus {os.cpu_count()}, load {load0}")
    with Timer(torch.device("cpu")) as t_load:
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    device = loaded.device
    dtype = next(loaded.model.parameters()).dtype
    log(f"loaded {args.model} on {device} ({dtype}) in {t_load.s:.1f}s")
    torch.manual_seed(0)
    lcfg = LoRAConfig(r=args.r, alpha=args.alpha, target_modules=DEFAULT_TARGETS)
    dims = model_dims(loaded.model)
    lora_io = lora_in_out_sum(loaded.model, set(lcfg.target_modules))
    engine = Engine(loaded, n_slots=args.k, lora=lcfg)
    tcfg = TrainConfig(learning_rate=args.lr, epochs=args.epochs, batch_size=1, compute_dtype=args.compute_dtype)
    train_dtype = next(engine.compute_model(tcfg.compute_dtype).parameters()).dtype
    grade, GradeItem, grader_name = make_grader()
    log(f"grader: {grader_name}")

    passages = load_passages(args.data, limit=args.passages)
    if len(passages) < args.passages:
        log(f"only {len(passages)} passages available")
    P, K = len(passages), args.k

    log(f"measuring matmul peak ({train_dtype}, the training passes' dtype) ...")
    peak = measure_peak(device, train_dtype)
    log(f"peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} {peak['n']}x{peak['n']} torch.mm, best of 5)")

    sampler.phase = "ours"
    # ---- self-edits: sampled once (timed; this is ours' "generate" column) or read from a file
    se_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.95,
                              batch_size=max(16, P * K))
    gen_s, gen_tokens, se_prompt_tokens = 0.0, 0, 0
    se_prompts = [self_edit_prompt(engine.tokenizer, p.title, p.context) for p in passages for _ in range(K)]
    se_prompt_tokens = statistics.fmean(len(engine.tokenizer(s, add_special_tokens=False)["input_ids"])
                                        for s in se_prompts)
    if args.self_edits_from:
        self_edits = load_self_edits(args.self_edits_from, passages, K)
        log(f"self-edits read from {args.self_edits_from} (ours' generate column is 0)")
    else:
        log(f"sampling {P * K} self-edits in one batched generate (max {args.max_new_tokens} new tokens, seed {args.seed}) ...")
        with Timer(device) as t_gen:
            texts, gen_tokens = engine.generate(se_prompts, se_cfg, seed=args.seed)
        gen_s = t_gen.s
        self_edits = [texts[i * K:(i + 1) * K] for i in range(P)]
        log(f"self-edits: {gen_s:.2f}s, {gen_tokens} tokens ({gen_tokens / gen_s:.1f} tok/s)")

    # ---- ours
    per_passage = run_ours(args, engine, passages, self_edits, gen_s, gen_tokens, tcfg, grade, GradeItem)
    n_evals = P * K
    ours_evals = [e for pp in per_passage for e in pp["evals"]]
    o_train = sum(pp["train_s"] for pp in per_passage)
    o_ans = sum(pp["answer_s"] for pp in per_passage)
    o_grade = sum(pp["grade_s"] for pp in per_passage)
    o_total = gen_s + o_train + o_ans + o_grade
    o_tokens = sum(pp["tokens"] for pp in per_passage)
    o_flops = sum(train_flops(e["seq_tokens"], dims, args.r, lora_io, args.epochs) for e in ours_evals)
    o_mfu = o_flops / o_train / peak["flops_per_s"]

    # ---- compute floor: training FLOPs at peak + decode tokens at the raw decode rate
    sampler.phase = "floor"
    log("measuring raw decode rates ...")
    ans_rows = max(pp["answer_rows"] for pp in per_passage)
    ans_prompt_tokens = statistics.fmean(
        len(engine.tokenizer(answer_prompt(engine.tokenizer, q.question), add_special_tokens=False)["input_ids"])
        for p in passages for q in p.questions)
    decoder = engine.compute_model(se_cfg.compute_dtype)  # ours decodes (samples and answers) in this dtype
    rate_ans = measure_decode_rate(decoder, min(ans_rows, 64), int(ans_prompt_tokens + args.answer_tokens / 2), device)
    floor_decode = sum(pp["answer_tokens"] for pp in per_passage) / rate_ans
    rate_se = None
    if gen_tokens:
        rate_se = measure_decode_rate(decoder, min(P * K, se_cfg.batch_size),
                                      int(se_prompt_tokens + args.max_new_tokens / 2), device)
        floor_decode += gen_tokens / rate_se
    floor_train = o_flops / peak["flops_per_s"]
    floor_per_eval = (floor_train + floor_decode) / n_evals
    log(f"decode rate: answers {rate_ans:.0f} tok/s @ batch {min(ans_rows, 64)}"
        + (f", self-edits {rate_se:.0f} tok/s @ batch {min(P * K, se_cfg.batch_size)}" if rate_se else ""))

    # ---- reference
    ref = []
    if args.ref_evals > 0:
        sampler.phase = "reference"
        ref = run_reference(args, passages, self_edits, tcfg, lcfg.target_modules, grade, GradeItem,
                            lambda s: engine.encode_example("", s, tcfg.max_seq_len), device, dtype)

    # ---- report
    load1 = os.getloadavg()
    sampler.stop()
    o_per = o_total / n_evals
    o_tag = (o_train + o_ans + o_grade) / n_evals
    lines = []
    w = lines.append
    w("")
    w(f"model {args.model} | device {device} {str(dtype).replace('torch.', '')} | torch threads {torch.get_num_threads()} "
      f"| P={P} passages x K={K} self-edits | epochs {args.epochs} lr {args.lr} r {args.r} alpha {args.alpha:g} "
      f"| targets {','.join(lcfg.target_modules)}")
    w(f"matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} torch.mm {peak['n']}^2) | "
      f"useful train FLOPs/token ~{o_flops / max(o_tokens, 1) / 1e6:.0f} MFLOP "
      f"(4N={4 * dims['n_nonemb'] / 1e6:.0f}M + head 4HV={4 * dims['hidden'] * dims['vocab'] / 1e6:.0f}M "
      f"+ LoRA 6r*sum(in+out)={6 * args.r * lora_io / 1e6:.0f}M + attn) | grader: {grader_name}")
    w(f"load average: start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} "
      f"(cpus {os.cpu_count()}); 1-min load while ours ran {sampler.summary('ours')}, while the reference ran "
      f"{sampler.summary('reference')} | OMP_WAIT_POLICY {omp_policy}")
    w("")
    hdr = (f"{'seconds per self-edit evaluation':<34}{'evals':>6}{'generate':>10}{'setup':>8}{'train':>9}"
           f"{'save+load':>10}{'answer':>9}{'grade':>8}{'TOTAL':>9}{'train tok/s':>12}{'MFU':>7}{'acc':>6}")
    w(hdr)
    w("-" * len(hdr))
    o_acc = [e["accuracy"] for e in ours_evals if e["accuracy"] is not None]
    w(f"{'ours (batched Engine)':<34}{n_evals:>6}{gen_s / n_evals:>10.3f}{0:>8.3f}{o_train / n_evals:>9.3f}"
      f"{0:>10.3f}{o_ans / n_evals:>9.3f}{o_grade / n_evals:>8.3f}{o_per:>9.3f}{o_tokens / o_train:>12.0f}"
      f"{o_mfu:>7.1%}{statistics.fmean(o_acc) if o_acc else float('nan'):>6.2f}")
    r_summary = None
    if ref:
        n = len(ref)
        m = lambda key: sum(x[key] for x in ref) / n  # noqa: E731
        r_train_s = sum(x["train_s"] for x in ref)
        r_flops = 0.0
        for x in ref:
            ss = [len(engine.encode_example("", s, tcfg.max_seq_len)[0]) for s in
                  training_sequences(passages[x["passage"]].title, passages[x["passage"]].context,
                                     self_edits[x["passage"]][x["k"]], max_sequences=args.max_sequences)]
            r_flops += train_flops(ss, dims, args.r, lora_io, args.epochs)
        r_mfu = r_flops / r_train_s / peak["flops_per_s"]
        r_acc = [x["accuracy"] for x in ref if x["accuracy"] is not None]
        w(f"{'reference (peft+Trainer, pad 2048)':<34}{n:>6}{0:>10.3f}{m('setup_s'):>8.3f}{m('train_s'):>9.3f}"
          f"{m('save_reload_s'):>10.3f}{m('answer_s'):>9.3f}{m('grade_s'):>8.3f}{m('total_s'):>9.3f}"
          f"{sum(x['real_tokens'] for x in ref) / r_train_s:>12.0f}{r_mfu:>7.1%}"
          f"{statistics.fmean(r_acc) if r_acc else float('nan'):>6.2f}")
        r_summary = dict(per_eval_s=m("total_s"), train_s=m("train_s"), mfu_useful=r_mfu,
                         real_tok_per_s=sum(x["real_tokens"] for x in ref) / r_train_s,
                         padded_tok_per_s=sum(x["padded_tokens"] for x in ref) / r_train_s,
                         accuracy=statistics.fmean(r_acc) if r_acc else None)
    w(f"{'compute floor':<34}{'':>6}{(gen_tokens / rate_se if rate_se else 0) / n_evals:>10.3f}{'':>8}"
      f"{floor_train / n_evals:>9.3f}{'':>10}{(floor_decode - (gen_tokens / rate_se if rate_se else 0)) / n_evals:>9.3f}"
      f"{'':>8}{floor_per_eval:>9.3f}")
    w("")
    w(f"compute floor per evaluation: {floor_train / n_evals:.3f}s training ({o_flops / n_evals / 1e9:.1f} GFLOP at peak) "
      f"+ {floor_decode / n_evals:.3f}s decoding ({(gen_tokens + sum(pp['answer_tokens'] for pp in per_passage)) / n_evals:.0f} "
      f"tokens at {rate_ans:.0f} tok/s answers" + (f", {rate_se:.0f} tok/s self-edits" if rate_se else "")
      + f") = {floor_per_eval:.3f}s; ours {o_per:.3f}s = {o_per / floor_per_eval:.1f}x the floor")
    same = [(e, x) for x in ref for e in ours_evals if e["passage"] == x["passage"] and e["k"] == x["k"]]
    if same:
        w("same self-edit, ours vs reference: mean train loss "
          + ", ".join(f"{e['mean_loss']:.3f}/{x['mean_loss']:.3f}" for e, x in same)
          + " | accuracy " + ", ".join(f"{e['accuracy']:.2f}/{x['accuracy']:.2f}" for e, x in same
                                       if e["accuracy"] is not None and x["accuracy"] is not None))
    if r_summary:
        w(f"reference train throughput: {r_summary['real_tok_per_s']:.0f} real tok/s, "
          f"{r_summary['padded_tok_per_s']:.0f} padded tok/s (every sequence padded to {REF_MAX_LEN})")
        w(f"speedup (train+answer+grade only): {r_summary['per_eval_s'] / o_tag:.1f}x")
    for line in lines:
        print(line)

    if args.json:
        dump = dict(
            args=vars(args), platform=platform.platform(), python=sys.version, torch=torch.__version__,
            device=str(device), dtype=str(dtype), threads=torch.get_num_threads(), cpus=os.cpu_count(),
            load_start=load0, load_end=load1, load_samples=sampler.samples, omp_wait_policy=omp_policy, grader=grader_name, peak=peak, dims=dims, lora_in_out_sum=lora_io,
            self_edits={p.passage_id: e for p, e in zip(passages, self_edits)},
            ours=dict(generate_s=gen_s, generate_tokens=gen_tokens, train_s=o_train, answer_s=o_ans, grade_s=o_grade,
                      total_s=o_total, per_eval_s=o_per, per_eval_no_generate_s=o_tag, train_tokens=o_tokens,
                      train_tok_per_s=o_tokens / o_train, train_flops=o_flops, mfu=o_mfu, passages=per_passage),
            floor=dict(train_s=floor_train, decode_s=floor_decode, per_eval_s=floor_per_eval,
                       decode_rate_answers=rate_ans, decode_rate_self_edits=rate_se),
            reference=dict(evals=ref, summary=r_summary),
            speedup=(r_summary["per_eval_s"] / o_per) if r_summary else None,
            speedup_no_generate=(r_summary["per_eval_s"] / o_tag) if r_summary else None)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dump, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")
    if r_summary:
        print(f"speedup: {r_summary['per_eval_s'] / o_per:.1f}x")
    else:
        print("speedup: n/a (no reference evaluations; --ref-evals 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
