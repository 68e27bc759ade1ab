"""SEAL's inner loop, written once for every domain.

    context --(generator)--> self-edit --(domain.training_plan)--> LoRA update --(domain.evaluate)--> reward

A `Domain` supplies three things: the prompt that asks for a self-edit, how a self-edit becomes a
training plan (or why it is invalid), and how to score the updated model on the context's task.
`SelfEditEvaluator` owns the model and runs jobs in groups of `n_slots`: the adapters of a group are
trained together in one batched pass and scored together in one batched decode (see engine.py).
Jobs are plain data, so an executor can ship them to other processes or machines (executors.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .engine import Engine, GenerationConfig, TrainConfig, TrainPlan
from .lora import LoRAConfig
from .models import load_model


class Domain(Protocol):
    """The three things the inner loop needs from a domain (knowledge incorporation, ARC, ...)."""

    def self_edit_prompt(self, tokenizer, context: Any) -> str:
        """The full prompt (chat template applied) asking the model for a self-edit of `context`."""

    def training_plan(self, context: Any, self_edit: str | None, seed: int) -> TrainPlan | str:
        """Training data and settings for one self-edit, or a string saying why it is invalid.
        self_edit=None asks for the domain's no-self-edit update (e.g. the passage alone)."""

    def evaluate(self, engine: Engine, contexts: Sequence[Any], slots: Sequence[int | None]) -> list[dict]:
        """Score the model with adapter slots[i] (None: no update) on contexts[i]'s task. Each dict
        has "score" (the reward, a float in [0, 1], or None if it could not be measured, e.g. the
        judge failed) plus domain details; timings go in "answer_s"/"grade_s"."""

    # Optional: `self_edit_choices() -> list[str] | None`. A domain whose self-edits come from a finite
    # set (ARC recipes in constrained mode) returns it, and sampling is restricted to it (engine.TokenTrie).


@dataclass
class Job:
    """One self-edit evaluation: train on (context, self_edit) with `seed`, then score.

    update=False scores the unadapted model (the no-update baseline)."""

    key: str
    context: Any
    self_edit: str | None = None
    seed: int = 0
    update: bool = True


@dataclass
class JobResult:
    key: str
    score: float | None
    valid: bool = True
    reason: str | None = None
    details: dict = field(default_factory=dict)
    train_s: float = 0.0
    answer_s: float = 0.0
    grade_s: float = 0.0
    train_tokens: int = 0
    final_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def complete(self) -> bool:
        """False when the grader failed on some answer: such a result is not recorded, so a resumed
        run retries it instead of keeping a score computed on part of the questions."""
        return not (self.valid and self.details.get("n_judge_failed", 0))


@dataclass
class EvaluatorSpec:
    """Everything needed to build a SelfEditEvaluator anywhere (plain data, picklable)."""

    model: str
    domain: Any
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    n_slots: int = 4
    device: str | None = None
    dtype: str | None = None

    def training_steps(self, job: Job) -> int:
        """Optimizer steps the job's adapter will train for (0 for a no-update job or an invalid self-edit):
        epochs x minibatches of its training plan, which is what a lockstep group's length depends on."""
        if not job.update or self.domain is None:
            return 0
        try:
            plan = self.domain.training_plan(job.context, job.self_edit, job.seed)
        except Exception:  # garbled: SelfEditEvaluator.run scores it 0 without training
            return 0
        if isinstance(plan, str) or not plan.examples:
            return 0
        epochs = plan.epochs if plan.epochs is not None else self.train.epochs
        return epochs * math.ceil(len(plan.examples) / self.train.batch_size)


class SelfEditEvaluator:
    """Holds the base model for a whole run; evaluates jobs and samples self-edits."""

    def __init__(self, spec: EvaluatorSpec, progress: bool = True):
        self.spec = spec
        self.domain = spec.domain
        self.engine = Engine(load_model(spec.model, device=spec.device, dtype=spec.dtype), spec.n_slots, spec.lora)
        self.progress = progress
        choices = getattr(self.domain, "self_edit_choices", None)
        self.choices = choices() if callable(choices) else None
        self.constraint = self.engine.constraint(self.choices) if self.choices else None
        self._vllm = None

    def sample_self_edits(self, contexts: Sequence[Any], k: int, cfg: GenerationConfig, seed: int) -> tuple[list[list[str]], float, int]:
        """k sampled self-edits per context in batched generation. Returns (texts, seconds, tokens)."""
        prompts = [self.domain.self_edit_prompt(self.engine.tokenizer, c) for c in contexts for _ in range(k)]
        t0 = time.perf_counter()
        if cfg.backend == "vllm":
            if self._vllm is None:
                from .vllm_sampler import VLLMSampler

                self._vllm = VLLMSampler(self.spec.model, self.spec.dtype)
            texts, n_tok = self._vllm.generate(prompts, cfg, seed, choices=self.choices, progress=self.progress)
        elif cfg.backend == "hf":
            texts, n_tok = self.engine.generate(prompts, cfg, seed=seed, progress=self.progress, desc="self-edits",
                                                constraint=self.constraint)
        else:
            raise ValueError(f"generation.backend must be hf or vllm, got {cfg.backend!r}")
        secs = time.perf_counter() - t0
        return [texts[i * k:(i + 1) * k] for i in range(len(contexts))], secs, n_tok

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Evaluate a group of at most n_slots updating jobs (plus any number of no-update jobs)."""
        results: dict[str, JobResult] = {}
        base_jobs = [j for j in jobs if not j.update]
        plans, train_jobs = [], []
        for j in jobs:
            if not j.update:
                continue
            try:
                plan = self.domain.training_plan(j.context, j.self_edit, j.seed)
            except Exception as e:  # a garbled self-edit must never crash the run
                plan = f"could not build a training plan: {type(e).__name__}: {e}"
            if isinstance(plan, str) or not plan.examples:
                results[j.key] = JobResult(j.key, 0.0, valid=False, reason=plan if isinstance(plan, str) else "no training examples")
            else:
                plans.append(plan)
                train_jobs.append(j)
        if len(train_jobs) > self.engine.n_slots:
            raise ValueError(f"{len(train_jobs)} updating jobs in one group; at most {self.engine.n_slots}")
        stats = None
        if train_jobs:
            stats = self.engine.train(plans, self.spec.train, progress=self.progress)
        eval_jobs = train_jobs + base_jobs
        slots: list[int | None] = list(range(len(train_jobs))) + [None] * len(base_jobs)
        if eval_jobs:
            scored = self.domain.evaluate(self.engine, [j.context for j in eval_jobs], slots)
            for i, (j, s) in enumerate(zip(eval_jobs, scored)):
                r = JobResult(j.key, s.get("score"), details={k: v for k, v in s.items() if k not in ("score", "answer_s", "grade_s")},
                              answer_s=s.get("answer_s", 0.0), grade_s=s.get("grade_s", 0.0))
                if i < len(train_jobs) and stats is not None:
                    # The group trained together: each job is charged an equal share of the wall time.
                    r.train_s = stats.seconds / len(train_jobs)
                    r.train_tokens = stats.trained_tokens // len(train_jobs)
                    r.final_loss = stats.losses[i][-1] if stats.losses[i] else None
                results[j.key] = r
        return [results[j.key] for j in jobs]


def group_jobs(jobs: Sequence[Job], n_slots: int, steps: Callable[[Job], int] | None = None) -> list[list[Job]]:
    """Split jobs into groups of at most n_slots updating jobs; no-update jobs form their own groups.
    The grouping depends only on the job list, so every executor forms the same groups.

    `steps` (EvaluatorSpec.training_steps): each job's training length. A group trains in lockstep until its
    longest adapter is done, so a 35-step plan beside seven 5-step ones runs 30 steps of one adapter, each
    costing most of a full step's fixed cost. Within each window of 4 * n_slots updating jobs (in list order,
    so a run stopped part-way still has the first contexts' updates complete) the jobs are grouped by length,
    longest first (which also hands the longest groups out first to parallel workers). Measured on a ReST-EM
    round (benchmarks/lockstep_steps.py runs/s8-new-local: 64 self-edits in groups of 8): 155 lockstep steps in
    list order, 100 this way."""
    updating = [j for j in jobs if j.update]
    base = [j for j in jobs if not j.update]
    if steps is not None:
        window = 4 * n_slots
        updating = [j for w in range(0, len(updating), window)
                    for j in sorted(updating[w:w + window], key=steps, reverse=True)]  # (stable: ties keep list order)
    # The cheap no-update baselines first: a run stopped part-way then has every baseline plus
    # complete updates for the first contexts, which is a valid (smaller) table.
    groups = [base[i:i + 64] for i in range(0, len(base), 64)]
    groups += [updating[i:i + n_slots] for i in range(0, len(updating), n_slots)]
    return groups


def self_edit_is_valid(domain: Domain, context: Any, text: str) -> bool:
    """Whether the domain can train on `text` (e.g. an ARC recipe that parses and fits the compute cap)."""
    try:
        plan = domain.training_plan(context, text, 0)
    except Exception:  # a garbled self-edit is invalid, never a crash
        return False
    return not isinstance(plan, str) and bool(plan.examples)


def sample_self_edit_units(executor, contexts: Sequence[Any], context_id, k: int, cfg: GenerationConfig, run,
                           key_prefix: str, seed: int, domain: Domain | None = None, redraws: int = 0,
                           fields: dict | None = None) -> None:
    """Sample k self-edits per context with `executor`'s model; one run unit `{key_prefix}/{id}` per context.

    Contexts go in chunks of whole contexts (cfg.batch_size // k per generate call) with the seed
    `seed + chunk position`, so a resumed or extended run samples exactly what an uninterrupted one would.
    With redraws > 0 (and `domain` given), invalid self-edits (see self_edit_is_valid) are redrawn up to
    that many extra times — bounded, unlike a redraw-until-it-parses loop; the unit records how many were
    replaced ("discarded")."""
    per_chunk = max(1, cfg.batch_size // max(k, 1))
    rounds = redraws if domain is not None else 0
    pending = [(c0, list(contexts[c0:c0 + per_chunk])) for c0 in range(0, len(contexts), per_chunk)]
    pending = [(c0, chunk) for c0, chunk in pending if not all(run.done(f"{key_prefix}/{context_id(c)}") for c in chunk)]
    calls = [(chunk, k, cfg, seed + c0) for c0, chunk in pending]
    # executors with several workers sample the chunks in parallel (results still come in chunk order)
    sampled = executor.sample_many(calls) if hasattr(executor, "sample_many") else \
        (executor.sample_self_edits(*call) for call in calls)
    for (c0, chunk), (texts, secs, n_tok) in zip(pending, sampled):
        texts = [list(tx) for tx in texts]
        discarded = [0] * len(chunk)
        # Validity of each kept self-edit, checked once (an ARC check builds the recipe's TTT data).
        valid = [[self_edit_is_valid(domain, c, x) for x in tx] for c, tx in zip(chunk, texts)] if rounds else []
        for r in range(1, rounds + 1):
            redo = [i for i, v in enumerate(valid) if not all(v)]
            if not redo:
                break
            more, s2, n2 = executor.sample_self_edits([chunk[i] for i in redo], k, cfg, seed=seed + c0 + 1_000_003 * r)
            secs, n_tok = secs + s2, n_tok + n2
            for i, new in zip(redo, more):
                fresh = [x for x in new if self_edit_is_valid(domain, chunk[i], x)]
                for j in range(len(texts[i])):
                    if fresh and not valid[i][j]:
                        texts[i][j], valid[i][j] = fresh.pop(0), True
                        discarded[i] += 1
        for c, tx, d in zip(chunk, texts, discarded):
            key = f"{key_prefix}/{context_id(c)}"
            if not run.done(key):
                run.record(key, {"context_id": context_id(c), **(fields or {}), "self_edits": tx, "discarded": d,
                                 "generate_s": secs / len(chunk), "generate_tokens": n_tok // len(chunk)})
