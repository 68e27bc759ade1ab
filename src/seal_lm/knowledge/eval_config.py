"""Config of `seal knowledge eval` (and `seal demo`): which passages, which conditions, which settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ExecutorOptions, RunOptions
from ..engine import GenerationConfig, TrainConfig
from ..lora import LoRAConfig
from ..models import EMBEDDED


def _self_edit_generation() -> GenerationConfig:
    # Paper: temperature 1.0, top-p 0.95. 256 new tokens holds ~10-15 implication lines.
    return GenerationConfig(max_new_tokens=256, temperature=1.0, top_p=0.95, batch_size=16)


@dataclass
class AnswerOptions:
    """How the updated model answers the passage's questions and how the answers are graded."""

    answer_tokens: int = 32
    """Max new tokens of an answer (greedy)."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint for GPT-4.1 grading (key from --judge-key-env); None: local grader."""
    judge_model: str = "gpt-4.1"
    """The judge model's name at --judge-url."""
    judge_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge's API key."""


@dataclass
class KnowledgeEvalConfig(RunOptions, ExecutorOptions, AnswerOptions):
    """`seal knowledge eval`: base / passage / own self-edits / external self-edits / generators."""

    data: str = "demo"
    """Passages: SEAL JSON, SQuAD v1.1 JSON, hf:squad[:split], or 'demo' (packaged fictional passages)."""
    passages: int | None = None
    """Use the first N passages (after --offset and the --external filter); None: all."""
    offset: int = 0
    """Skip this many passages first."""
    k: int = 3
    """Self-edits sampled per passage for the 'own' condition (each evaluated separately)."""
    seeds: int = 1
    """LoRA seeds per self-edit; the reward is the mean over seeds."""
    external: str | None = None
    """SEAL JSON with `completions` (e.g. GPT-4.1 implications); restricts passages to those it covers."""
    external_k: int | None = None
    """External completions used per passage (default: k)."""
    generators: list[str] = field(default_factory=list)
    """Extra self-edit generators (e.g. a SEAL round checkpoint); each adds a table row."""
    generator_learns: bool = True
    """Generator rows: the generator checkpoint is also the model updated and answering (the paper: its
    TTT server loads the RL checkpoint); false updates --model with the generator's self-edits instead."""
    conditions: list[str] = field(default_factory=lambda: ["base", "passage", "own", "external"])
    """Rows to compute: base, passage, own, external (external needs --external), generator."""
    model: str = EMBEDDED
    """The model that is updated and answers (and writes the 'own' self-edits)."""
    style: str = "implications"
    """Self-edit prompt style: implications, implications-long, implications-very-long, rewrite, self-qa."""
    template: str | None = None
    """Path of a user self-edit template file with {title} and {context}."""
    max_sequences: int = 32
    """Cap on training sequences taken from one self-edit."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=_self_edit_generation)
    """Sampling of self-edits."""
    slots: int = 4
    """Adapters trained together in one batched pass."""
