"""Knowledge incorporation as a SEAL domain: passage -> notes -> LoRA -> closed-book QA accuracy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..engine import Engine, GenerationConfig, TrainPlan
from .data import Passage
from .grading import GradeItem, make_grader
from .prompts import answer_prompt, load_user_template, self_edit_prompt
from .self_edits import training_sequences


def _answer_defaults() -> GenerationConfig:
    return GenerationConfig(max_new_tokens=32, temperature=0.0, batch_size=64)


@dataclass
class KnowledgeDomain:
    """How knowledge self-edits are asked for, turned into training data and rewarded."""

    style: str = "implications"
    """Self-edit prompt: implications, implications-long, implications-very-long, rewrite, self-qa."""
    template: str | None = None
    """A user template text with {title} and {context} (overrides `style`)."""
    max_sequences: int = 32
    """At most this many self-edit lines become training sequences (bounds a runaway self-edit's cost)."""
    include_passage: bool = True
    """Add the passage itself as a training sequence (the paper does)."""
    answer: GenerationConfig = field(default_factory=_answer_defaults)
    """Decoding of answers: greedy and short, as in the paper."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint for the paper's GPT-4.1 grader; None: the local grader."""
    judge_model: str = "gpt-4.1"
    judge_key_env: str = "OPENAI_API_KEY"
    judge_cache: str | None = None

    def __post_init__(self):
        self._grader = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_grader"] = None  # rebuilt where it is used (e.g. inside a Ray actor)
        return state

    @property
    def grader(self):
        if self._grader is None:
            self._grader = make_grader(self.judge_url, self.judge_model, self.judge_key_env, self.judge_cache)
        return self._grader

    @classmethod
    def from_config(cls, cfg, run_path: Path) -> "KnowledgeDomain":
        """The domain of any knowledge command's config (eval, cpt, train, continual share these fields);
        the judge's verdict cache lives in the run directory."""
        template = getattr(cfg, "template", None)
        gen = getattr(cfg, "generation", None)  # answers decode in the dtype the self-edits are sampled in
        return cls(
            style=cfg.style, template=load_user_template(template) if template else None,
            max_sequences=cfg.max_sequences,
            answer=GenerationConfig(max_new_tokens=cfg.answer_tokens, temperature=0.0, batch_size=64,
                                    compute_dtype=gen.compute_dtype if gen is not None else "auto"),
            judge_url=cfg.judge_url, judge_model=cfg.judge_model, judge_key_env=cfg.judge_key_env,
            judge_cache=str(run_path / "judge_cache.jsonl") if cfg.judge_url else None,
        )

    # -- Domain protocol ------------------------------------------------------------------
    def self_edit_prompt(self, tokenizer, context: Passage) -> str:
        return self_edit_prompt(tokenizer, context.title, context.context, self.style, self.template)

    def training_plan(self, context: Passage, self_edit: str | None, seed: int) -> TrainPlan | str:
        seqs = training_sequences(context.title, context.context, self_edit, self_qa=self.style == "self-qa",
                                  include_passage=self.include_passage, max_sequences=self.max_sequences)
        if self_edit is not None and len(seqs) <= int(self.include_passage):
            return "the self-edit has no usable lines"
        return TrainPlan(examples=[("", s) for s in seqs], seed=seed)

    def evaluate(self, engine: Engine, contexts: Sequence[Passage], slots: Sequence[int | None]) -> list[dict]:
        prompts, adapters, owners = [], [], []
        for i, (p, slot) in enumerate(zip(contexts, slots)):
            for q in p.questions:
                prompts.append(answer_prompt(engine.tokenizer, q.question))
                adapters.append(slot)
                owners.append(i)
        t0 = time.perf_counter()
        answers, _ = engine.generate(prompts, self.answer, adapters=adapters)
        answer_s = time.perf_counter() - t0
        questions = [q for p in contexts for q in p.questions]
        items = [GradeItem(q.question, q.answer, a.strip()) for q, a in zip(questions, answers)]
        t0 = time.perf_counter()
        verdicts = self.grader.grade(items)
        grade_s = time.perf_counter() - t0
        out = []
        for i, p in enumerate(contexts):
            rows = [(it, v) for it, v, o in zip(items, verdicts, owners) if o == i]
            judged = [v for _, v in rows if v is not None]
            out.append({
                # A judge failure is not "wrong": accuracy is over the judged questions only.
                "score": (sum(judged) / len(judged)) if judged else None,
                "n_questions": len(rows),
                "n_judge_failed": len(rows) - len(judged),
                "answers": [{"question": it.question, "gold": it.gold, "prediction": it.prediction, "correct": v}
                            for it, v in rows],
                "answer_s": answer_s * len(rows) / max(len(items), 1),
                "grade_s": grade_s * len(rows) / max(len(items), 1),
            })
        return out
