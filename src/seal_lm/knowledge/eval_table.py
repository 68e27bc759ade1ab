"""`seal knowledge eval`: the paper's comparison table, one readable recipe (setup -> loop -> save).

Per passage: base (no update), passage only, passage + the model's own self-edits (K samples, each
evaluated), passage + external self-edits (e.g. GPT-4.1), passage + self-edits from other generators
(e.g. a SEAL round). Every self-edit evaluation is a unit in the run directory, so a crashed run
resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import EXECUTION_FIELDS, config_hash, to_dict
from ..executors import make_executor, run_jobs
from ..inner_loop import EvaluatorSpec, Job, JobResult, sample_self_edit_units
from ..runs import RunDir
from ..stats import bootstrap_ci
from .data import Passage, load_passages
from .domain import KnowledgeDomain
from .eval_config import KnowledgeEvalConfig


ADDITIVE = EXECUTION_FIELDS + ("generators", "conditions", "passages", "slots")
"""Fields that may change between invocations of one run directory: they add rows or passages, or change
how work is grouped (slots: batched training equals one-by-one within float tolerance, tested)."""


def generator_names(generators: list[str]) -> dict[str, str]:
    """Row name -> checkpoint path. A ReST-EM round directory (holding generator/) is named
    'SEAL round i'; other generators 'generator', 'generator1', ..."""
    import re

    out: dict[str, str] = {}
    for g in generators:
        path = Path(g)
        if (path / "generator").is_dir():
            path = path / "generator"
        rd = path.parent.name if path.name == "generator" else path.name
        m = re.fullmatch(r"round-(\d+)", rd)
        name = base = f"SEAL round {m.group(1)}" if m else f"generator:{path.name}"
        n = 2
        while name in out:
            name, n = f"{base} ({n})", n + 1
        out[name] = str(path)
    return out


def select_passages(cfg: KnowledgeEvalConfig) -> list[Passage]:
    passages = load_passages(cfg.data)
    if cfg.external:
        ext = {(p.title, p.context.strip()): p.completions for p in load_passages(cfg.external)}
        kept = []
        for p in passages:
            comps = ext.get((p.title, p.context.strip()))
            if comps:
                p.completions = list(comps)
                kept.append(p)
        if not kept:
            raise ValueError(f"no passage of {cfg.data} appears in {cfg.external} (matched by title and context)")
        passages = kept
    passages = passages[cfg.offset:]
    if cfg.passages is not None:
        passages = passages[: cfg.passages]
    if not passages:
        raise ValueError(f"no passages selected from {cfg.data}")
    return passages


def default_out(cfg: KnowledgeEvalConfig, kind: str = "knowledge-eval") -> Path:
    return Path("runs") / f"{kind}-{config_hash(cfg, exclude=EXECUTION_FIELDS)}"


def sample_with_generator(generator: str, passages: list[Passage], cfg: KnowledgeEvalConfig, domain, run: RunDir,
                          tag: str, executor=None) -> None:
    """Sample K self-edits per passage from `generator` (the executor's model when executor is given),
    recording one unit per passage so a resumed run never resamples."""
    for p in passages:
        key = f"gen/{tag}/{p.passage_id}"
        if run.done(key) and Path(run.get(key)["generator"]).resolve() != Path(generator).resolve() \
                and run.get(key)["generator"] != generator:
            raise ValueError(f"row {tag!r} in {run.path} was sampled from {run.get(key)['generator']}, "
                             f"not {generator}; use another --out")
    if all(run.done(f"gen/{tag}/{p.passage_id}") for p in passages):
        return
    own_executor = executor is None
    if own_executor:
        spec = EvaluatorSpec(model=generator, domain=domain, lora=cfg.lora, train=cfg.train, n_slots=1,
                             device=cfg.device, dtype=cfg.dtype)
        executor = make_executor(spec, "local", progress=cfg.progress)
    sample_self_edit_units(executor, passages, lambda p: p.passage_id, cfg.k, cfg.generation, run, f"gen/{tag}",
                           seed=cfg.seed, fields={"generator": generator})
    if own_executor:
        del executor


def learners(cfg: KnowledgeEvalConfig, sources: dict) -> dict[str, str]:
    """Condition -> the model that is updated and answers: --model, except generator rows when
    cfg.generator_learns (then the generator itself, as in the paper)."""
    gens = generator_names(cfg.generators)
    return {c: (gens[c] if cfg.generator_learns and c in gens else cfg.model) for c in ["base", "passage", *sources]}


def run_by_learner(cfg: KnowledgeEvalConfig, jobs: list[Job], learner_of: dict[str, str], executor, on_result,
                   domain, desc: str = "self-edit evaluations") -> None:
    """Run jobs on `executor` (holding cfg.model), and the jobs of other learners on one executor each.
    A job's condition is the second part of its key (eval/<condition>/... or cpt/<condition>)."""
    by_model: dict[str, list[Job]] = {}
    for j in jobs:
        by_model.setdefault(learner_of.get(j.key.split("/")[1], cfg.model), []).append(j)
    try:
        run_jobs(executor, by_model.pop(cfg.model, []), on_result=on_result, progress=cfg.progress, desc=desc)
    finally:
        executor.close()
    for model, js in by_model.items():
        spec = EvaluatorSpec(model=model, domain=domain, lora=cfg.lora, train=cfg.train,
                             n_slots=cfg.slots, device=cfg.device, dtype=cfg.dtype)
        ex = make_executor(spec, cfg.executor, progress=cfg.progress, **cfg.executor_kwargs())
        try:
            run_jobs(ex, js, on_result=on_result, progress=cfg.progress, desc=f"{desc} (learner {model})")
        finally:
            ex.close()


def build_jobs(cfg: KnowledgeEvalConfig, passages: list[Passage], run: RunDir, sources: dict[str, str]) -> list[Job]:
    """All evaluation jobs of the table. sources: condition name -> generation tag ('' = external)."""
    jobs: list[Job] = []
    for p in passages:
        if "base" in cfg.conditions:
            jobs.append(Job(f"eval/base/{p.passage_id}", p, None, 0, update=False))
        for s in range(cfg.seeds):
            if "passage" in cfg.conditions:
                jobs.append(Job(f"eval/passage/{p.passage_id}/0/s{s}", p, None, cfg.seed + s))
            for cond, tag in sources.items():
                if tag:
                    edits = run.get(f"gen/{tag}/{p.passage_id}")["self_edits"]
                else:
                    edits = p.completions[: cfg.external_k or cfg.k]
                for j, text in enumerate(edits):
                    jobs.append(Job(f"eval/{cond}/{p.passage_id}/{j}/s{s}", p, text, cfg.seed + s))
    return jobs


def summarize(cfg: KnowledgeEvalConfig, passages: list[Passage], run: RunDir, rows: list[str]) -> dict:
    """Per-condition mean accuracy over passages with 95% bootstrap CI, plus per-passage values."""
    table = {"rows": [], "per_passage": {}, "timings": {}}
    base_by_pid = {}
    for cond in rows:
        per_passage, best_of_k, n_q, n_edits, n_invalid = {}, {}, 0, 0, 0
        for p in passages:
            pref = f"eval/{cond}/{p.passage_id}"
            recs = [r for key, r in run.units.items() if key == pref or key.startswith(pref + "/")]

            def edit_of(r, pref=pref):  # the self-edit index: the key part after the passage id
                return r["unit"][len(pref) + 1:].split("/")[0] if r["unit"] != pref else "0"
            scores = [r["score"] for r in recs if r.get("score") is not None]
            if not scores:
                continue
            n_edits += len({edit_of(r) for r in recs})
            n_invalid += sum(1 for r in recs if not r.get("valid", True))
            per_passage[p.passage_id] = float(np.mean(scores))
            n_q += len(p.questions)
            by_edit: dict[str, list[float]] = {}
            for r in recs:
                if r.get("score") is not None:
                    by_edit.setdefault(edit_of(r), []).append(r["score"])
            best_of_k[p.passage_id] = max(float(np.mean(v)) for v in by_edit.values())
        if cond == "base":
            base_by_pid = per_passage
        ci = bootstrap_ci(list(per_passage.values()), seed=cfg.seed)
        gains = [per_passage[k] - base_by_pid[k] for k in per_passage if k in base_by_pid] if cond != "base" else []
        row = {"condition": cond, "accuracy": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
               "passages": ci.n, "questions": n_q, "self_edits": n_edits if cond not in ("base", "passage") else 0,
               "invalid_self_edits": n_invalid,
               "gain_over_base": float(np.mean(gains)) if gains else None}
        table["rows"].append(row)
        table["per_passage"][cond] = per_passage
        if cond not in ("base", "passage") and len(per_passage) and cfg.k > 1:
            bci = bootstrap_ci(list(best_of_k.values()), seed=cfg.seed)
            table["rows"].append({"condition": f"{cond} (best of K, oracle)", "accuracy": bci.mean, "ci_low": bci.low,
                                  "ci_high": bci.high, "passages": bci.n, "questions": n_q, "self_edits": n_edits,
                                  "invalid_self_edits": n_invalid,
                                  "gain_over_base": float(np.mean([best_of_k[k] - base_by_pid[k] for k in best_of_k if k in base_by_pid])) if base_by_pid else None})
    # Wall time per self-edit evaluation, split by phase (means over updating units).
    evals = [r for k, r in run.units.items() if k.startswith("eval/") and not k.startswith("eval/base/") and r.get("valid", True)]
    gens = [r for k, r in run.units.items() if k.startswith("gen/")]
    gen_per_edit = (sum(r["generate_s"] for r in gens) / max(1, sum(len(r["self_edits"]) for r in gens))) if gens else 0.0
    if evals:
        table["timings"] = {
            "generate_s": gen_per_edit,
            "train_s": float(np.mean([r["train_s"] for r in evals])),
            "answer_s": float(np.mean([r["answer_s"] for r in evals])),
            "grade_s": float(np.mean([r["grade_s"] for r in evals])),
            "train_tokens": float(np.mean([r["train_tokens"] for r in evals])),
            "evaluations": len(evals),
        }
        table["timings"]["total_s"] = sum(table["timings"][k] for k in ("generate_s", "train_s", "answer_s", "grade_s"))
    return table


def render_markdown(table: dict, title: str) -> str:
    lines = [f"### {title}", "", "| condition | accuracy % [95% CI] | gain vs base (pts) | passages | questions | self-edits |",
             "|---|---|---|---|---|---|"]
    for r in table["rows"]:
        acc = "n/a" if r["passages"] == 0 else f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        gain = "" if r["gain_over_base"] is None else f"{100 * r['gain_over_base']:+.1f}"
        lines.append(f"| {r['condition']} | {acc} | {gain} | {r['passages']} | {r['questions']} | {r['self_edits'] or ''} |")
    t = table.get("timings")
    if t:
        lines += ["", f"Wall time per self-edit evaluation ({t['evaluations']} evaluations): "
                      f"generate {t['generate_s']:.1f} s, train {t['train_s']:.1f} s, answer {t['answer_s']:.1f} s, "
                      f"grade {t['grade_s']:.3f} s; total {t['total_s']:.1f} s ({t['train_tokens']:.0f} training tokens each)."]
    return "\n".join(lines) + "\n"


def render_csv(table: dict) -> str:
    buf = io.StringIO()
    cols = ["condition", "accuracy", "ci_low", "ci_high", "gain_over_base", "passages", "questions", "self_edits", "invalid_self_edits"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in table["rows"]:
        w.writerow(r)
    return buf.getvalue()


def run_eval(cfg: KnowledgeEvalConfig, title: str = "Knowledge incorporation (no-context QA accuracy)") -> dict:
    # ---- setup
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    run = RunDir(out, cfg, additive=ADDITIVE)
    passages = select_passages(cfg)
    if "external" in cfg.conditions and not cfg.external:
        cfg = replace(cfg, conditions=[c for c in cfg.conditions if c != "external"])
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    print(f"{len(passages)} passages, {sum(len(p.questions) for p in passages)} questions; conditions: {', '.join(cfg.conditions)}")
    domain = KnowledgeDomain.from_config(cfg, out)
    spec = EvaluatorSpec(model=cfg.model, domain=domain, lora=cfg.lora, train=cfg.train, n_slots=cfg.slots,
                         device=cfg.device, dtype=cfg.dtype)
    t_start = time.perf_counter()
    executor = make_executor(spec, cfg.executor, progress=cfg.progress, **cfg.executor_kwargs())

    # ---- self-edits: own samples, then other generators (each recorded per passage)
    sources: dict[str, str] = {}
    if "own" in cfg.conditions:
        sample_with_generator(cfg.model, passages, cfg, domain, run, "own", executor=executor)
        sources["own"] = "own"
    if "external" in cfg.conditions:
        sources["external"] = ""
    for name, g in generator_names(cfg.generators).items():
        sample_with_generator(g, passages, cfg, domain, run, name)
        sources[name] = name

    # ---- inner loop over every (passage, self-edit, seed) not yet done
    jobs = [j for j in build_jobs(cfg, passages, run, sources) if not run.done(j.key)]

    def on_result(r: JobResult) -> None:
        if r.complete:
            run.record(r.key, r.to_dict())

    run_by_learner(cfg, jobs, learners(cfg, sources), executor, on_result, domain)

    # ---- save
    rows = [c for c in ("base", "passage") if c in cfg.conditions] + list(sources)
    table = summarize(cfg, passages, run, rows)
    table["config"] = to_dict(cfg)
    table["generators"] = generator_names(cfg.generators)
    table["wall_s_this_invocation"] = time.perf_counter() - t_start
    run.write_json("table.json", table)
    run.write_text("table.csv", render_csv(table))
    md = render_markdown(table, title)
    run.write_text("table.md", md)
    per = [{"passage_id": p.passage_id, "title": p.title,
            **{c: table["per_passage"].get(c, {}).get(p.passage_id) for c in rows}} for p in passages]
    run.write_json("per_passage.json", per)
    print(md)
    print(f"outputs: {out}/table.md, table.csv, table.json, per_passage.json, units.jsonl")
    return table
