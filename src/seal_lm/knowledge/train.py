"""`seal knowledge train`: ReST-EM on training passages (the shared outer loop + the knowledge domain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import EXECUTION_FIELDS, ExecutorOptions, RunOptions, config_hash
from ..engine import GenerationConfig, TrainConfig
from ..lora import LoRAConfig
from ..models import EMBEDDED
from ..outer_loop import RestEMConfig, _sft_lora, _sft_train, run_rest_em
from ..runs import RunDir
from .data import load_passages
from .domain import KnowledgeDomain
from .eval_config import AnswerOptions


@dataclass
class KnowledgeTrainConfig(RunOptions, ExecutorOptions, AnswerOptions):
    """`seal knowledge train`: rounds of sample -> inner-loop reward -> select -> SFT the generator."""

    data: str = "demo"
    """Training passages (never the evaluation passages: titles must be disjoint)."""
    rounds: int = 2
    passages_per_round: int = 16
    """New passages per round."""
    k: int = 4
    """Self-edits sampled per passage (paper: 5)."""
    seeds: int = 1
    """Inner-loop seeds per self-edit."""
    selection: str = "top1"
    """top1 (paper) or threshold (every self-edit beating the no-update baseline)."""
    min_gain: float | None = None
    """top1 only: keep the best self-edit only if it beats the baseline by this much."""
    model: str = EMBEDDED
    """The starting generator (and inner-loop learner)."""
    style: str = "implications"
    """Self-edit prompt style (see `seal knowledge eval --help`)."""
    max_sequences: int = 32
    """Cap on training sequences taken from one self-edit."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Inner-loop adapters."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Inner-loop training."""
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=256, temperature=1.0, top_p=0.95, batch_size=16))
    """Sampling of self-edits (paper: temperature 1.0, top-p 0.95)."""
    sft_lora: LoRAConfig = field(default_factory=_sft_lora)
    """Generator SFT adapter, merged after each round (paper: r=64, alpha=128)."""
    sft: TrainConfig = field(default_factory=_sft_train)
    """Generator SFT (paper: lr 3e-4, 2 epochs), loss on self-edit tokens only."""
    separate_learner: bool = False
    """Keep the inner-loop learner at --model instead of the current generator."""
    slots: int = 4
    """Adapters trained together in one batched pass."""


def run_train(cfg: KnowledgeTrainConfig):
    out = Path(cfg.out) if cfg.out else Path("runs") / f"knowledge-train-{config_hash(cfg, exclude=EXECUTION_FIELDS)}"
    run = RunDir(out, cfg)
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    passages = load_passages(cfg.data)
    domain = KnowledgeDomain.from_config(cfg, out)
    rcfg = RestEMConfig(rounds=cfg.rounds, contexts_per_round=cfg.passages_per_round, k=cfg.k, seeds=cfg.seeds,
                        selection=cfg.selection, min_gain=cfg.min_gain, generation=cfg.generation,
                        sft_lora=cfg.sft_lora, sft=cfg.sft, separate_learner=cfg.separate_learner)
    summaries = run_rest_em(rcfg, passages, lambda p: p.passage_id, domain, cfg.model, run, cfg.lora, cfg.train,
                            n_slots=cfg.slots, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                            executor=cfg.executor, executor_kwargs=cfg.executor_kwargs(), progress=cfg.progress)
    lines = ["| round | baseline | mean reward | selected reward | reward std within passage | best > baseline "
             "| SFT examples | invalid | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.round} | {s.mean_baseline:.3f} | {s.mean_reward:.3f} | {s.mean_selected_reward:.3f} | "
                     f"{s.within_context_std:.3f} | {s.contexts_best_beats_baseline}/{s.contexts} | {s.sft_examples} | "
                     f"{s.invalid} | {s.seconds:.0f} |")
    run.write_text("rounds.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    print("\ngenerators: " + ", ".join(str(out / f'round-{s.round}' / 'generator') for s in summaries))
    print(f"reward plot: {out / 'rewards.png'}")
    return summaries
