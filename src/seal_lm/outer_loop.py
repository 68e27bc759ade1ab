"""SEAL's outer loop: ReST-EM over self-edits, one recipe for every domain.

Each round: for each of N new training contexts, sample K self-edits from the current generator,
score each with the inner loop (mean over S seeds) against the no-update baseline, keep the top-1 per
context (or every self-edit that beats the baseline), supervised-finetune the generator on
(prompt -> kept self-edit) with a LoRA on completion tokens only, merge it, and save the new
generator checkpoint. By default the learner (the model updated in the inner loop) is the current
generator, as in the paper; `--separate-learner` keeps the learner fixed at the base model.

Resumable at both levels: every sampling and every self-edit evaluation is a unit in units.jsonl,
and a round whose generator checkpoint exists is never redone.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .engine import Engine, GenerationConfig, TrainConfig, TrainPlan
from .executors import make_executor, run_jobs
from .inner_loop import EvaluatorSpec, Job, sample_self_edit_units
from .lora import LoRAConfig
from .models import load_model, load_tokenizer
from .runs import RunDir


def _sft_lora() -> LoRAConfig:
    return LoRAConfig(r=64, alpha=128)


def _sft_train() -> TrainConfig:
    return TrainConfig(learning_rate=3e-4, epochs=2, batch_size=4, max_seq_len=1024, grad_clip=1.0)


@dataclass
class RestEMConfig:
    """ReST-EM settings (paper defaults where the paper gives them)."""

    rounds: int = 2
    """Outer-loop rounds."""
    contexts_per_round: int = 16
    """New training contexts used in each round."""
    k: int = 4
    """Self-edits sampled per context (paper: 5)."""
    seeds: int = 1
    """Inner-loop seeds per self-edit; the reward is the mean."""
    selection: str = "top1"
    """top1: the best self-edit per context (paper, knowledge); threshold: every self-edit beating the
    baseline; reward: every self-edit with reward >= min_gain (paper, ARC: every recipe that solved)."""
    min_gain: float | None = None
    """top1: keep a context's best self-edit only if reward - baseline >= min_gain (None: always);
    reward: the absolute reward a self-edit needs (None: 1.0)."""
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=256, temperature=1.0, top_p=0.95, batch_size=16))
    """Sampling of self-edits (paper: temperature 1.0, top-p 0.95)."""
    sft_lora: LoRAConfig = field(default_factory=_sft_lora)
    """Generator SFT adapter (paper: r=64, alpha=128, all linear layers), merged after each round."""
    sft: TrainConfig = field(default_factory=_sft_train)
    """Generator SFT (paper: lr 3e-4, 2 epochs), loss on self-edit tokens only."""
    separate_learner: bool = False
    """Keep the inner-loop learner at the base model instead of the current generator."""
    redraws: int = 0
    """Redraw self-edits the domain cannot train on (e.g. an ARC recipe that does not parse) up to this
    many extra times; 0 keeps every draw (an invalid one scores 0 and is never selected)."""


@dataclass
class RoundSummary:
    round: int
    generator: str
    contexts: int
    self_edits: int
    invalid: int
    mean_baseline: float
    mean_reward: float
    mean_selected_reward: float
    sft_examples: int
    seconds: float
    within_context_std: float = 0.0
    """Mean over contexts of the std of the K self-edits' rewards: the signal selection can exploit."""
    contexts_best_beats_baseline: int = 0
    """Contexts whose best self-edit scored above their no-update baseline."""

    def to_dict(self):
        return dict(self.__dict__)


def reward_spread(rewards: dict[str, list[tuple[int, float | None]]], baselines: dict[str, float | None]) -> dict:
    """How much selection has to work with: reward spread within contexts and how often the best helps."""
    stds, beats = [], 0
    for cid, rs in rewards.items():
        vals = [r for _, r in rs if r is not None]
        if len(vals) > 1:
            stds.append(float(np.std(vals)))
        if vals and baselines.get(cid) is not None and max(vals) > baselines[cid]:
            beats += 1
    return {"within_context_std": float(np.mean(stds)) if stds else 0.0, "contexts_best_beats_baseline": beats}


def select(rewards: dict[str, list[tuple[int, float | None]]], baselines: dict[str, float | None],
           mode: str = "top1", min_gain: float | None = None) -> dict[str, list[int]]:
    """Which self-edits to keep, per context. rewards[cid] = [(sample index, mean reward)].

    top1: the highest mean reward (ties: the earliest sample, so selection is deterministic);
    threshold: every sample whose reward is strictly above the context's baseline;
    reward: every sample whose reward is at least min_gain (default 1.0), whatever the baseline."""
    kept: dict[str, list[int]] = {}
    for cid, rs in rewards.items():
        valid = [(j, r) for j, r in rs if r is not None]
        if not valid:
            kept[cid] = []
            continue
        base = baselines.get(cid)
        if mode == "top1":
            j, r = max(valid, key=lambda t: (t[1], -t[0]))
            ok = min_gain is None or (base is not None and r - base >= min_gain)
            kept[cid] = [j] if ok else []
        elif mode == "threshold":
            kept[cid] = [j for j, r in valid if base is not None and r > base]
        elif mode == "reward":  # absolute: every sample with reward >= min_gain (ARC: solved the task)
            kept[cid] = [j for j, r in valid if r >= (min_gain if min_gain is not None else 1.0)]
        else:
            raise ValueError(f"unknown selection mode {mode!r}: top1, threshold or reward")
    return kept


def sft_generator(model_path: str, examples: list[tuple[str, str]], cfg: RestEMConfig, out_dir: Path, seed: int,
                  device=None, dtype=None, progress: bool = True) -> dict:
    """LoRA-finetune the generator on (prompt, completion) pairs, merge, save a full checkpoint."""
    t0 = time.perf_counter()
    loaded = load_model(model_path, device=device, dtype=dtype)
    engine = Engine(loaded, n_slots=1, lora=cfg.sft_lora)
    stats = engine.train([TrainPlan(examples=examples, seed=seed)], cfg.sft, progress=progress) if examples else None
    if stats is not None:
        engine.lora.merge_into_base(0)
    model = engine.lora.detach()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    if out_dir.exists():  # left by a crash between saving and writing the round summary
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # a crash mid-save leaves no half checkpoint that resume would trust
    return {"sft_losses": stats.losses[0] if stats else [], "sft_steps": stats.steps if stats else 0,
            "sft_train_s": stats.seconds if stats else 0.0, "sft_s": time.perf_counter() - t0}  # train; load+train+save


def run_rest_em(
    cfg: RestEMConfig,
    contexts: Sequence[Any],
    context_id: Callable[[Any], str],
    domain: Any,
    base_model: str,
    run: RunDir,
    inner_lora: LoRAConfig,
    inner_train: TrainConfig,
    n_slots: int = 4,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    executor: str = "local",
    executor_kwargs: dict | None = None,
    progress: bool = True,
) -> list[RoundSummary]:
    """Run (or resume) the outer loop; returns one summary per round."""
    need = cfg.rounds * cfg.contexts_per_round
    if len(contexts) < need:
        raise ValueError(f"{cfg.rounds} rounds x {cfg.contexts_per_round} contexts need {need} contexts; got {len(contexts)}")
    order = list(range(len(contexts)))
    random.Random(seed).shuffle(order)  # rounds draw disjoint random contexts
    generator = base_model
    summaries = []
    for rnd in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        rdir = run.path / f"round-{rnd}"
        rdir.mkdir(exist_ok=True)
        ckpt = rdir / "generator"
        ctxs = [contexts[i] for i in order[(rnd - 1) * cfg.contexts_per_round: rnd * cfg.contexts_per_round]]
        learner = base_model if cfg.separate_learner else generator
        print(f"round {rnd}/{cfg.rounds}: generator {generator}, learner {learner}, {len(ctxs)} contexts")
        summary_path = rdir / "summary.json"
        if ckpt.exists() and (ckpt / "config.json").exists() and summary_path.exists():
            print(f"round {rnd}: already finished, skipping")
            summary = RoundSummary(**json.loads(summary_path.read_text()))
            if (rdir / "rewards.json").exists():  # summaries written before these fields existed
                rw = json.loads((rdir / "rewards.json").read_text())
                for k, v in reward_spread({c: [tuple(x) for x in rs] for c, rs in rw["rewards"].items()},
                                          rw["baselines"]).items():
                    setattr(summary, k, v)
            summaries.append(summary)
            generator = str(ckpt)
            continue

        # 1) sample K self-edits per context from the current generator (one unit per context)
        spec = EvaluatorSpec(model=generator, domain=domain, lora=inner_lora, train=inner_train, n_slots=n_slots,
                             device=device, dtype=dtype)
        ex = make_executor(spec, executor, progress=progress, **(executor_kwargs or {}))
        # chunks and seeds by position: a resumed round samples exactly what it would have
        sample_self_edit_units(ex, ctxs, context_id, cfg.k, cfg.generation, run, f"r{rnd}/gen",
                               seed=seed * 7919 + rnd * 1009, domain=domain, redraws=cfg.redraws)
        if learner != generator:
            ex.close()
            ex = make_executor(EvaluatorSpec(model=learner, domain=domain, lora=inner_lora, train=inner_train,
                                             n_slots=n_slots, device=device, dtype=dtype),
                               executor, progress=progress, **(executor_kwargs or {}))

        # 2) inner loop: baseline + every (self-edit, seed)
        jobs = []
        for c in ctxs:
            cid = context_id(c)
            jobs.append(Job(f"r{rnd}/eval/{cid}/base", c, None, 0, update=False))
            for j, text in enumerate(run.get(f"r{rnd}/gen/{cid}")["self_edits"]):
                for s in range(cfg.seeds):
                    jobs.append(Job(f"r{rnd}/eval/{cid}/{j}/s{s}", c, text, seed + s))
        run_jobs(ex, [j for j in jobs if not run.done(j.key)],
                 on_result=lambda r: run.record(r.key, r.to_dict()) if r.complete else None,
                 progress=progress, desc=f"round {rnd} self-edit evaluations")
        ex.close()
        del ex

        # 3) select and build the SFT set (prompt -> self-edit completion)
        rewards: dict[str, list[tuple[int, float | None]]] = {}
        baselines: dict[str, float | None] = {}
        n_invalid = 0
        for c in ctxs:
            cid = context_id(c)
            baselines[cid] = run.get(f"r{rnd}/eval/{cid}/base").get("score")
            edits = run.get(f"r{rnd}/gen/{cid}")["self_edits"]
            rs = []
            for j in range(len(edits)):
                recs = [run.get(f"r{rnd}/eval/{cid}/{j}/s{s}") for s in range(cfg.seeds)]
                n_invalid += sum(1 for r in recs if not r.get("valid", True))
                # an invalid self-edit (reward 0 by rule) is never a candidate for the SFT set
                scores = [r["score"] for r in recs if r.get("valid", True) and r.get("score") is not None]
                rs.append((j, float(np.mean(scores)) if scores else None))
            rewards[cid] = rs
        kept = select(rewards, baselines, cfg.selection, cfg.min_gain)
        tokenizer = load_tokenizer(generator)
        sft_rows = []
        for c in ctxs:
            cid = context_id(c)
            edits = run.get(f"r{rnd}/gen/{cid}")["self_edits"]
            for j in kept[cid]:
                sft_rows.append({"context_id": cid, "sample": j, "reward": dict(rewards[cid])[j],
                                 "baseline": baselines[cid], "prompt": domain.self_edit_prompt(tokenizer, c),
                                 "completion": edits[j]})
        with open(rdir / "sft.jsonl", "w", encoding="utf-8") as f:
            for row in sft_rows:
                f.write(json.dumps(row) + "\n")
        (rdir / "rewards.json").write_text(json.dumps({"baselines": baselines, "rewards": rewards, "kept": kept}, indent=2))

        # 4) finetune the generator on the kept self-edits and save the merged checkpoint
        eos = tokenizer.eos_token or ""
        examples = [(r["prompt"], r["completion"] + eos) for r in sft_rows]
        sft_info = sft_generator(generator, examples, cfg, ckpt, seed=seed + rnd, device=device, dtype=dtype,
                                 progress=progress)
        all_r = [r for rs in rewards.values() for _, r in rs if r is not None]
        summary = RoundSummary(
            round=rnd, generator=generator, contexts=len(ctxs), self_edits=sum(len(v) for v in rewards.values()),
            invalid=n_invalid,
            mean_baseline=float(np.mean([b for b in baselines.values() if b is not None])) if baselines else 0.0,
            mean_reward=float(np.mean(all_r)) if all_r else 0.0,
            mean_selected_reward=float(np.mean([r["reward"] for r in sft_rows])) if sft_rows else 0.0,
            sft_examples=len(sft_rows), seconds=time.perf_counter() - t0, **reward_spread(rewards, baselines),
        )
        (rdir / "sft_info.json").write_text(json.dumps(sft_info))
        summary_path.write_text(json.dumps(summary.to_dict(), indent=2))
        summaries.append(summary)
        print(f"round {rnd}: baseline {summary.mean_baseline:.3f}, mean reward {summary.mean_reward:.3f}, "
              f"selected {summary.mean_selected_reward:.3f} ({summary.sft_examples} SFT examples)")
        generator = str(ckpt)
    plot_rewards(summaries, run.path / "rewards.png")
    (run.path / "rounds.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=2))
    return summaries


def plot_rewards(summaries: list[RoundSummary], path: Path) -> None:
    """Reward per round: baseline, mean over all sampled self-edits, mean of the selected ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.round for s in summaries]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [s.mean_baseline for s in summaries], "o--", label="no update (baseline)")
    ax.plot(x, [s.mean_reward for s in summaries], "o-", label="sampled self-edits (mean)")
    ax.plot(x, [s.mean_selected_reward for s in summaries], "s-", label="selected self-edits")
    ax.set_xlabel("ReST-EM round (generator = previous round's)")
    ax.set_ylabel("reward")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
