"""`seal knowledge cpt`: continued pretraining on many passages at once (the paper's 200-passage setting).

All N passages and their self-edits train ONE adapter per condition; accuracy is over all their
questions. Conditions: base (no update), passage only, own self-edits, external self-edits (e.g.
GPT-4.1), and each extra generator (e.g. a SEAL round). The condition adapters are independent, so
they train together in one batched pass (one slot each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import to_dict
from ..engine import Engine, TrainPlan
from ..executors import make_executor
from ..inner_loop import EvaluatorSpec, Job
from ..runs import RunDir
from ..stats import bootstrap_ci
from .data import Passage, Question
from .domain import KnowledgeDomain
from .eval_config import KnowledgeEvalConfig
from .eval_table import (ADDITIVE, default_out, generator_names, learners, run_by_learner, sample_with_generator,
                         select_passages)


@dataclass
class Corpus:
    """Many passages treated as one context."""

    passages: list[Passage]

    @property
    def passage_id(self) -> str:
        return "corpus:" + ",".join(p.passage_id for p in self.passages)


@dataclass
class CorpusDomain:
    """Wraps KnowledgeDomain: the self-edit is a JSON list with one self-edit (or null) per passage."""

    inner: KnowledgeDomain

    def self_edit_prompt(self, tokenizer, context: Passage) -> str:
        return self.inner.self_edit_prompt(tokenizer, context)  # self-edits are sampled per passage

    def training_plan(self, context: Corpus, self_edit: str | None, seed: int) -> TrainPlan | str:
        edits = json.loads(self_edit) if self_edit is not None else [None] * len(context.passages)
        if not isinstance(edits, list) or len(edits) != len(context.passages):
            return "a CPT self-edit must be a JSON list with one entry per passage"
        examples = []
        for p, e in zip(context.passages, edits):
            e = e if isinstance(e, str) else None
            plan = self.inner.training_plan(p, e, seed)
            if isinstance(plan, str):  # one garbled self-edit: that passage contributes itself only
                plan = self.inner.training_plan(p, None, seed)
            examples += plan.examples
        return TrainPlan(examples=examples, seed=seed)

    def evaluate(self, engine: Engine, contexts: Sequence[Corpus], slots) -> list[dict]:
        merged = [Passage(title="corpus", context="", questions=[q for p in c.passages for q in p.questions])
                  for c in contexts]
        return self.inner.evaluate(engine, merged, slots)


def run_cpt(cfg: KnowledgeEvalConfig) -> dict:
    out = Path(cfg.out) if cfg.out else default_out(cfg, "knowledge-cpt")
    # The corpus is all passages at once, so --passages is not additive here.
    run = RunDir(out, cfg, additive=tuple(f for f in ADDITIVE if f != "passages"))
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    passages = select_passages(cfg)
    domain = KnowledgeDomain.from_config(cfg, out)
    cfg_one = cfg if cfg.k == 1 else type(cfg)(**{**cfg.__dict__, "k": 1})  # one self-edit per passage
    sources: dict[str, list[str | None]] = {}
    spec = EvaluatorSpec(model=cfg.model, domain=CorpusDomain(domain), lora=cfg.lora, train=cfg.train,
                         n_slots=max(1, cfg.slots), device=cfg.device, dtype=cfg.dtype)
    ex = make_executor(spec, cfg.executor, progress=cfg.progress, **cfg.executor_kwargs())
    if "own" in cfg.conditions:
        sample_with_generator(cfg.model, passages, cfg_one, domain, run, "own", executor=ex)
        sources["own"] = [run.get(f"gen/own/{p.passage_id}")["self_edits"][0] for p in passages]
    if "external" in cfg.conditions and cfg.external:
        sources["external"] = [p.completions[0] for p in passages]
    for name, g in generator_names(cfg.generators).items():
        sample_with_generator(g, passages, cfg_one, domain, run, name)
        sources[name] = [run.get(f"gen/{name}/{p.passage_id}")["self_edits"][0] for p in passages]

    corpus = Corpus(passages)
    jobs = []
    if "base" in cfg.conditions:
        jobs.append(Job("cpt/base", corpus, None, update=False))
    if "passage" in cfg.conditions:
        jobs.append(Job("cpt/passage", corpus, None, cfg.seed))
    for name, edits in sources.items():
        jobs.append(Job(f"cpt/{name}", corpus, json.dumps(edits), cfg.seed))
    run_by_learner(cfg, [j for j in jobs if not run.done(j.key)], learners(cfg, sources), ex,
                   lambda r: run.record(r.key, r.to_dict()) if r.complete else None, CorpusDomain(domain),
                   desc="CPT conditions")

    n_q = sum(len(p.questions) for p in passages)
    rows = []
    for j in jobs:
        rec = run.get(j.key)
        answers = rec["details"].get("answers", [])
        # Answers come in passage order: per-passage accuracy gives a bootstrap CI over passages, as in the
        # single-passage table (questions of one passage are not independent).
        per_passage, i = [], 0
        for p in passages:
            judged = [a["correct"] for a in answers[i:i + len(p.questions)] if a["correct"] is not None]
            i += len(p.questions)
            if judged:
                per_passage.append(sum(judged) / len(judged))
        ci = bootstrap_ci(per_passage, seed=cfg.seed)
        rows.append({"condition": j.key.split("/", 1)[1], "accuracy": rec["score"], "questions": n_q,
                     "passages": len(passages), "train_s": rec["train_s"], "train_tokens": rec["train_tokens"],
                     "correct": sum(1 for a in answers if a["correct"]),
                     "passage_mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high})
    table = {"rows": rows, "config": to_dict(cfg)}
    run.write_json("table.json", table)
    lines = [f"### Continued pretraining: {len(passages)} passages, {n_q} questions, one adapter per condition", "",
             "| condition | accuracy % (questions) | per-passage mean % [95% CI] | correct | train s | training tokens |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        ci = "n/a" if r["passage_mean"] != r["passage_mean"] else \
            f"{100 * r['passage_mean']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        lines.append(f"| {r['condition']} | {acc} | {ci} | {r['correct']}/{r['questions']} | {r['train_s']:.0f} | "
                     f"{r['train_tokens']} |")
    lines += ["", "Conditions trained in one batched pass share its wall time and token count equally."]
    md = "\n".join(lines) + "\n"
    run.write_text("table.md", md)
    print(md)
    print(f"outputs: {out}/table.md, table.json, units.jsonl")
    return table


__all__ = ["Corpus", "CorpusDomain", "run_cpt", "Question"]
