"""`seal arc eval` and `seal arc train`: the paper's few-shot ARC table and the ReST-EM run producing SEAL.

eval, per task: icl (no update), default (TTT with the hand-written recipe), ttt (K recipes sampled from
the base model, each evaluated), seal (K recipes from a ReST-EM generator), oracle (every recipe of the
oracle grid; a task counts if any solves it). Every recipe sampling and every evaluation is a unit of
the run directory, so a crashed run resumes where it stopped and a finished one does no work.

train: the shared ReST-EM loop (outer_loop.run_rest_em) with the ARC domain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EXECUTION_FIELDS, config_hash, to_dict
from ..executors import make_executor, run_jobs
from ..inner_loop import EvaluatorSpec, Job, JobResult, sample_self_edit_units
from ..models import load_tokenizer
from ..outer_loop import RestEMConfig, RoundSummary, run_rest_em
from ..runs import RunDir
from ..stats import bootstrap_ci
from .arc_config import ArcEvalConfig, ArcTrainConfig
from .data import ArcTask, filter_tasks, load_tasks
from .domain import ArcDomain
from .recipe import ORACLE_GRID, parse_recipe

CONDITIONS = ("icl", "default", "ttt", "seal", "oracle")
SAMPLED = ("ttt", "seal")
ADDITIVE = EXECUTION_FIELDS + ("conditions", "offset", "limit", "oracle_recipes")
"""eval fields that may change between invocations of one run directory: they add rows, tasks or oracle
recipes (units are keyed by condition, task id and recipe index) but never change a finished unit."""


def select_tasks(cfg: ArcEvalConfig | ArcTrainConfig, tokenizer=None) -> list[ArcTask]:
    """Load, filter (grid size, token length), drop tasks whose test outputs are unknown, slice."""
    tasks = load_tasks(cfg.tasks)
    if cfg.max_prompt_tokens is not None and tokenizer is None:
        tokenizer = load_tokenizer(cfg.model)
    tasks = filter_tasks(tasks, cfg.max_grid_side, cfg.max_prompt_tokens, tokenizer)
    tasks = [t for t in tasks if all(ex.output is not None for ex in t.test)]  # cannot be graded otherwise
    tasks = tasks[getattr(cfg, "offset", 0):]
    if getattr(cfg, "limit", None) is not None:
        tasks = tasks[: cfg.limit]
    if not tasks:
        raise ValueError(f"no task of {cfg.tasks} passes the filters (max_grid_side={cfg.max_grid_side}, "
                         f"max_prompt_tokens={cfg.max_prompt_tokens}) with known test outputs")
    return tasks


def make_domain(cfg: ArcEvalConfig | ArcTrainConfig, eos_text: str = "") -> ArcDomain:
    return ArcDomain(n_views=cfg.n_views, max_examples=cfg.max_examples, max_epoch_examples=cfg.max_epoch_examples,
                     leave_out=tuple(cfg.leave_out), n_color_perms=cfg.n_color_perms,
                     max_seq_chars=cfg.train.max_seq_len, prompt_demos=cfg.prompt_demos, eos_text=eos_text,
                     answer_batch_size=cfg.answer_batch_size, answer_compute_dtype=cfg.generation.compute_dtype,
                     recipe_format=cfg.recipe_format,
                     recipe_learning_rates=tuple(cfg.recipe_learning_rates), recipe_epochs=tuple(cfg.recipe_epochs))


class _Executors:
    """One executor (one loaded model) at a time, created only when there is work for it."""

    def __init__(self, cfg: ArcEvalConfig, domain: ArcDomain):
        self.cfg, self.domain = cfg, domain
        self.model: str | None = None
        self.ex = None
        self.loads = 0

    def get(self, model: str):
        if self.model != model:
            self.close()
            c = self.cfg
            spec = EvaluatorSpec(model=model, domain=self.domain, lora=c.lora, train=c.train, n_slots=c.slots,
                                 device=c.device, dtype=c.dtype)
            self.ex = make_executor(spec, c.executor, progress=c.progress, **c.executor_kwargs())
            self.model = model
            self.loads += 1
        return self.ex

    def close(self) -> None:
        if self.ex is not None:
            self.ex.close()
        self.ex, self.model = None, None


def _sample(ex, cfg: ArcEvalConfig, tasks: list[ArcTask], run: RunDir, cond: str, generator: str, domain) -> None:
    """K recipes per task from the executor's model; one unit per task, so a resumed run never resamples.
    With cfg.redraws > 0, invalid recipes are redrawn (bounded; the paper's code redraws until the JSON
    decodes); the unit records how many were discarded."""
    sample_self_edit_units(ex, tasks, lambda t: t.task_id, cfg.k, cfg.generation, run, f"gen/{cond}", seed=cfg.seed,
                           domain=domain, redraws=cfg.redraws, fields={"generator": generator})


def build_jobs(cfg: ArcEvalConfig, tasks: list[ArcTask], run: RunDir, cond: str) -> list[tuple[Job, dict]]:
    """(job, metadata recorded with its result) for every evaluation of `cond`; sampled recipes must exist."""
    out = []
    oracle = ORACLE_GRID[: cfg.oracle_recipes] if cfg.oracle_recipes is not None else ORACLE_GRID
    for t in tasks:
        tid = t.task_id
        if cond == "icl":
            edits: list[str | None] = [None]
        elif cond == "default":
            edits = [None]
        elif cond == "oracle":
            edits = [r.to_json() for r in oracle]
        else:
            edits = list(run.get(f"gen/{cond}/{tid}")["self_edits"])
        for j, text in enumerate(edits):
            key = f"eval/{cond}/{tid}" if cond == "icl" else f"eval/{cond}/{tid}/{j}"
            out.append((Job(key, t, text, cfg.seed, update=cond != "icl"),
                        {"task_id": tid, "condition": cond, "index": j, "self_edit": text}))
    return out


def _recipe_of(text: str | None) -> dict | None:
    if text is None:
        return None
    r, _ = parse_recipe(text)
    return r.to_dict() if r else None


def summarize(cfg: ArcEvalConfig, tasks: list[ArcTask], run: RunDir) -> dict:
    """Per condition: success over (task, recipe) pairs (the paper's number, invalid recipes count as 0),
    tasks solved by at least one recipe, invalid recipes, and mean wall times per evaluation."""
    table: dict[str, Any] = {"rows": [], "per_task": {}}
    for cond in cfg.conditions:
        per_task_rate, per_task_any, n_eval, n_invalid, n_unscored = {}, {}, 0, 0, 0
        recs_all = []
        for t in tasks:
            prefix = f"eval/{cond}/{t.task_id}"
            recs = [r for k, r in run.units.items() if k == prefix or k.startswith(prefix + "/")]
            recs_all += recs
            n_eval += len(recs)
            n_invalid += sum(1 for r in recs if not r.get("valid", True))
            scores = [r["score"] for r in recs if r.get("score") is not None]
            n_unscored += len(recs) - len(scores)
            if scores:
                per_task_rate[t.task_id] = float(np.mean(scores))
                per_task_any[t.task_id] = float(max(scores))
        ci = bootstrap_ci(list(per_task_rate.values()), seed=cfg.seed)
        valid = [r for r in recs_all if r.get("valid", True)]
        gens = [run.units[f"gen/{cond}/{t.task_id}"] for t in tasks if f"gen/{cond}/{t.task_id}" in run.units]
        n_gen = sum(len(g["self_edits"]) for g in gens)
        table["rows"].append({
            "condition": cond,
            "success_rate": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
            "tasks": ci.n,
            "tasks_solved_any": int(sum(v > 0 for v in per_task_any.values())),
            "any_rate": float(np.mean(list(per_task_any.values()))) if per_task_any else float("nan"),
            "evaluations": n_eval, "recipes_per_task": n_eval / max(ci.n, 1), "invalid": n_invalid,
            "unscored": n_unscored, "redrawn": sum(g.get("discarded", 0) for g in gens),
            "generate_s": sum(g["generate_s"] for g in gens) / n_gen if n_gen else 0.0,
            "train_s": float(np.mean([r["train_s"] for r in valid])) if valid else 0.0,
            "answer_s": float(np.mean([r["answer_s"] for r in valid])) if valid else 0.0,
        })
        table["per_task"][cond] = per_task_rate
    return table


def render_markdown(table: dict, title: str) -> str:
    lines = [f"### {title}", "",
             "| condition | success % over (task, recipe) pairs [95% CI] | tasks solved by >= 1 recipe | recipes/task "
             "| invalid recipes | generate s | train s | answer s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        rate = "n/a" if r["tasks"] == 0 else f"{100 * r['success_rate']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        anyr = "n/a" if r["tasks"] == 0 else f"{r['tasks_solved_any']}/{r['tasks']} ({100 * r['any_rate']:.1f}%)"
        invalid = f"{r['invalid']}" + (f" (+{r['redrawn']} redrawn)" if r.get("redrawn") else "")
        lines.append(f"| {r['condition']} | {rate} | {anyr} | {r['recipes_per_task']:.1f} | {invalid} | "
                     f"{r['generate_s']:.1f} | {r['train_s']:.1f} | {r['answer_s']:.1f} |")
    lines += ["", "Oracle: a task counts as solved if any grid recipe solves it (the upper bound), i.e. the "
                  "'tasks solved by >= 1 recipe' column. Times are means per evaluation (generate: per recipe)."]
    return "\n".join(lines) + "\n"


def per_task_records(cfg: ArcEvalConfig, tasks: list[ArcTask], run: RunDir) -> list[dict]:
    """Per task and condition: every recipe (text, parsed form), validity and reason, outcome, votes, times."""
    out = []
    for t in tasks:
        row: dict[str, Any] = {"task_id": t.task_id, "demos": len(t.train), "tests": len(t.test),
                               "max_side": t.max_side(), "conditions": {}}
        for cond in cfg.conditions:
            prefix = f"eval/{cond}/{t.task_id}"
            recs = sorted((r for k, r in run.units.items() if k == prefix or k.startswith(prefix + "/")),
                          key=lambda r: r.get("index", 0))
            row["conditions"][cond] = {
                "solved_any": any(r.get("score") == 1.0 for r in recs),
                "recipes": [{"index": r.get("index"), "self_edit": r.get("self_edit"), "recipe": _recipe_of(r.get("self_edit")),
                             "valid": r.get("valid", True), "reason": r.get("reason"), "score": r.get("score"),
                             "top2": [x.get("top2") for x in r.get("details", {}).get("tests", [])],
                             "votes": [x.get("votes") for x in r.get("details", {}).get("tests", [])],
                             "train_s": r.get("train_s"), "answer_s": r.get("answer_s"),
                             "train_tokens": r.get("train_tokens"), "final_loss": r.get("final_loss")}
                            for r in recs],
            }
        out.append(row)
    return out


def run_arc_eval(cfg: ArcEvalConfig, title: str = "Few-shot ARC (pass@2 success rate)") -> dict:
    """Run (or resume) the ARC table; writes table.md, table.json, per_task.json in the run directory."""
    # ---- setup
    bad = [c for c in cfg.conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; choose from {list(CONDITIONS)}")
    out = Path(cfg.out) if cfg.out else Path("runs") / f"arc-eval-{config_hash(cfg, exclude=ADDITIVE)}"
    run = RunDir(out, cfg, additive=ADDITIVE)
    tokenizer = load_tokenizer(cfg.model)
    tasks = select_tasks(cfg, tokenizer)
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    print(f"{len(tasks)} tasks; conditions: {', '.join(cfg.conditions)}")
    domain = make_domain(cfg, tokenizer.eos_token or "")
    generator = cfg.generator or cfg.model
    learner = {c: cfg.model for c in cfg.conditions}
    if "seal" in learner and not cfg.separate_learner:
        learner["seal"] = generator  # the paper test-time trains the RL-trained generator itself
    gen_model = {"ttt": cfg.model, "seal": generator}
    executors = _Executors(cfg, domain)
    t_start = time.perf_counter()

    # ---- per model: sample the recipes it writes, then run the evaluations it learns (skipping done units).
    # Order so that the generator's recipes exist before a separate learner needs them.
    models = [generator, cfg.model] if cfg.separate_learner else [cfg.model, generator]
    meta: dict[str, dict] = {}

    def on_result(r: JobResult) -> None:
        m = meta[r.key]
        run.record(r.key, {**r.to_dict(), **m})

    try:
        for model in dict.fromkeys(models):
            for cond in (c for c in cfg.conditions if c in SAMPLED and gen_model[c] == model):
                if any(not run.done(f"gen/{cond}/{t.task_id}") for t in tasks):
                    _sample(executors.get(model), cfg, tasks, run, cond, model, domain)
            jobs = []
            for cond in (c for c in cfg.conditions if learner[c] == model):
                if cond in SAMPLED and any(not run.done(f"gen/{cond}/{t.task_id}") for t in tasks):
                    continue  # its generator comes later in `models`
                for job, m in build_jobs(cfg, tasks, run, cond):
                    if not run.done(job.key):
                        jobs.append(job)
                        meta[job.key] = m
            if jobs:
                run_jobs(executors.get(model), jobs, on_result=on_result, progress=cfg.progress,
                         desc=f"ARC evaluations ({model})")
    finally:
        executors.close()

    # ---- save
    table = summarize(cfg, tasks, run)
    table["config"] = to_dict(cfg)
    table["generator"] = generator
    table["model_loads_this_invocation"] = executors.loads
    table["wall_s_this_invocation"] = time.perf_counter() - t_start
    run.write_json("table.json", table)
    md = render_markdown(table, title)
    run.write_text("table.md", md)
    run.write_json("per_task.json", per_task_records(cfg, tasks, run))
    print(md)
    print(f"outputs: {out}/table.md, table.json, per_task.json, units.jsonl")
    return table


def run_arc_train(cfg: ArcTrainConfig) -> list[RoundSummary]:
    """ReST-EM on ARC training tasks with the shared outer loop; each round saves a generator checkpoint."""
    out = Path(cfg.out) if cfg.out else Path("runs") / f"arc-train-{config_hash(cfg, exclude=EXECUTION_FIELDS)}"
    run = RunDir(out, cfg)
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    tokenizer = load_tokenizer(cfg.model)
    tasks = select_tasks(cfg, tokenizer)
    print(f"{len(tasks)} training tasks after filtering")
    domain = make_domain(cfg, tokenizer.eos_token or "")
    rcfg = RestEMConfig(rounds=cfg.rounds, contexts_per_round=cfg.tasks_per_round, k=cfg.k, seeds=cfg.seeds,
                        selection=cfg.selection, min_gain=cfg.min_gain, generation=cfg.generation,
                        sft_lora=cfg.sft_lora, sft=cfg.sft, separate_learner=cfg.separate_learner,
                        redraws=cfg.redraws)
    summaries = run_rest_em(rcfg, tasks, domain.context_id, domain, cfg.model, run, cfg.lora, cfg.train,
                            n_slots=cfg.slots, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                            executor=cfg.executor, executor_kwargs=cfg.executor_kwargs(), progress=cfg.progress)
    lines = ["| round | ICL (baseline) | mean reward | selected reward | SFT examples | invalid recipes | wall s |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.round} | {s.mean_baseline:.3f} | {s.mean_reward:.3f} | {s.mean_selected_reward:.3f} | "
                     f"{s.sft_examples} | {s.invalid} | {s.seconds:.0f} |")
    md = "\n".join(lines) + "\n"
    run.write_text("rounds.md", md)
    print("\n" + md)
    print("generators: " + ", ".join(str(out / f"round-{s.round}" / "generator") for s in summaries))
    return summaries
