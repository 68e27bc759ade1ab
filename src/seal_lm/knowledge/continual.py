"""`seal knowledge continual`: self-edits accumulate over a sequence of passages; measure forgetting.

For each of M random orders of N passages: at step t the *current* model writes a self-edit of
passage t, a fresh LoRA is trained on it and then merged into the weights (or kept stacked on top,
by option), and every passage seen so far is re-evaluated. This gives an accuracy matrix
R[t][i] (after step t, on the i-th passage of the order, i <= t), from which:

  final mean accuracy   = mean_i R[N-1][i]
  backward transfer     = mean_{i<N-1} (R[N-1][i] - R[i][i])            (Lopez-Paz & Ranzato 2017)
  forgetting            = mean_{i<N-1} (max_{i<=t<N-1} R[t][i] - R[N-1][i])  (Chaudhry et al. 2018)

Resumable per step: each step's adapter is saved until its order finishes, so a resumed order
rebuilds the merged model exactly instead of retraining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import RunOptions, config_hash
from ..engine import Engine, GenerationConfig, TrainConfig
from ..lora import LoRAConfig
from ..models import EMBEDDED, load_model
from ..runs import RunDir
from .data import load_passages
from .domain import KnowledgeDomain
from .eval_config import AnswerOptions


@dataclass
class ContinualConfig(RunOptions, AnswerOptions):
    """`seal knowledge continual`: sequential self-edits, accuracy matrix, forgetting."""

    data: str = "demo"
    """Passages (any format `seal knowledge eval --data` reads)."""
    passages: int = 8
    """Length N of the passage sequence."""
    offset: int = 0
    """Skip this many passages first."""
    orders: int = 3
    """Random orders M to average over."""
    mode: str = "merge"
    """merge: fold each adapter into the weights; stack: keep adapters separate, all applied."""
    model: str = EMBEDDED
    """The model that writes each self-edit and is updated with it."""
    style: str = "implications"
    """Self-edit prompt style (see `seal knowledge eval --help`)."""
    max_sequences: int = 32
    """Cap on training sequences taken from one self-edit."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The adapter of each update (merged, or stacked with --mode stack)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training of each update."""
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=256, temperature=1.0, top_p=0.95, batch_size=16))
    """Sampling of self-edits."""


def continual_metrics(R: np.ndarray) -> dict[str, float]:
    """Metrics of one lower-triangular accuracy matrix R[t, i] (NaN above the diagonal)."""
    n = R.shape[0]
    final = R[n - 1, :n]
    out = {"final_mean": float(np.mean(final))}
    if n > 1:
        out["backward_transfer"] = float(np.mean([R[n - 1, i] - R[i, i] for i in range(n - 1)]))
        out["forgetting"] = float(np.mean([np.max(R[i:n - 1, i]) - R[n - 1, i] for i in range(n - 1)]))
    else:
        out["backward_transfer"] = out["forgetting"] = 0.0
    return out


def _target_weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {name: m.base.weight.detach().clone() for name, m in engine.lora.modules}


@torch.no_grad()
def _restore(engine: Engine, saved: dict[str, torch.Tensor]) -> None:
    engine.lora.load_base_weights(saved)
    engine.lora.stacked = []
    engine.lora.reset()


def plot_heatmap(R: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(np.ma.masked_invalid(R), vmin=0, vmax=1, cmap="viridis")
    n = R.shape[0]
    for t in range(n):
        for i in range(n):
            if not np.isnan(R[t, i]):
                ax.text(i, t, f"{R[t, i]:.2f}", ha="center", va="center", fontsize=7, color="w" if R[t, i] < 0.6 else "k")
    ax.set_xlabel("passage (position in the order)")
    ax.set_ylabel("after update step")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_continual(cfg: ContinualConfig) -> dict:
    if cfg.mode not in ("merge", "stack"):
        raise ValueError(f"mode must be merge or stack, not {cfg.mode!r}")
    out = Path(cfg.out) if cfg.out else Path("runs") / f"knowledge-continual-{config_hash(cfg, exclude=('out', 'progress'))}"
    run = RunDir(out, cfg)
    print(f"run directory: {out}" + (f" (resuming: {run.resumed} finished units)" if run.resumed else ""))
    passages = load_passages(cfg.data, limit=cfg.passages, offset=cfg.offset)
    n = len(passages)
    if n < 2:
        raise ValueError("the continual setting needs at least 2 passages")
    domain = KnowledgeDomain.from_config(cfg, out)
    engine = Engine(load_model(cfg.model, device=cfg.device, dtype=cfg.dtype),
                    n_slots=n if cfg.mode == "stack" else 1, lora=cfg.lora)
    saved = _target_weights(engine)
    adir = out / "adapters"
    adir.mkdir(exist_ok=True)
    matrices = []
    from safetensors.torch import load_file, save_file

    for o in range(cfg.orders):
        order = list(range(n))
        random.Random(cfg.seed * 1000 + o).shuffle(order)
        _restore(engine, saved)
        R = np.full((n, n), np.nan)
        for t in range(n):
            key = f"o{o}/s{t}"
            slot = t if cfg.mode == "stack" else 0
            if run.done(key):
                rec = run.get(key)
                R[t, : t + 1] = rec["scores"]
                f = adir / f"o{o}_s{t}.safetensors"
                if t < n - 1 and not run.done(f"o{o}/s{n - 1}"):
                    if not f.exists():
                        raise RuntimeError(f"{f} is missing: cannot rebuild order {o}; delete units of o{o} in {run.units_path}")
                    engine.lora.load_adapter_state(slot, load_file(f))
                    _accumulate(engine, cfg.mode, slot)
                continue
            p = passages[order[t]]
            texts, _ = engine.generate([domain.self_edit_prompt(engine.tokenizer, p)], cfg.generation,
                                       seed=cfg.seed * 7919 + o * 101 + t)
            plan = domain.training_plan(p, texts[0], seed=cfg.seed + t)
            if isinstance(plan, str):  # a garbled self-edit: fall back to the passage alone, and say so
                plan = domain.training_plan(p, None, seed=cfg.seed + t)
            engine.train([plan], cfg.train, progress=cfg.progress, slots=[slot])
            save_file({k: v.contiguous() for k, v in engine.lora.adapter_state(slot).items()}, adir / f"o{o}_s{t}.safetensors")
            _accumulate(engine, cfg.mode, slot)
            seen = [passages[order[i]] for i in range(t + 1)]
            res = domain.evaluate(engine, seen, [None] * len(seen))
            scores = [r["score"] if r["score"] is not None else float("nan") for r in res]
            if any(np.isnan(scores)):  # the judge failed: stop here; a rerun resumes at this step
                raise RuntimeError(f"the grader failed on order {o}, step {t}; rerun the same command to resume")
            R[t, : t + 1] = scores
            run.record(key, {"order": order, "step": t, "passage_id": p.passage_id, "self_edit": texts[0],
                             "scores": scores})
            print(f"order {o + 1}/{cfg.orders} step {t + 1}/{n}: " + " ".join(f"{s:.2f}" for s in scores))
        for f in adir.glob(f"o{o}_s*.safetensors"):
            f.unlink()  # the order is finished and recorded; its adapters are no longer needed
        matrices.append(R)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)  # cells above the diagonal are all NaN
        mean_R = np.nanmean(np.stack(matrices), axis=0)
    per_order = [continual_metrics(R) for R in matrices]
    summary = {k: float(np.mean([m[k] for m in per_order])) for k in per_order[0]}
    result = {"mean_matrix": mean_R.tolist(), "matrices": [R.tolist() for R in matrices],
              "per_order": per_order, "summary": summary, "mode": cfg.mode, "passages": n, "orders": cfg.orders}
    run.write_json("continual.json", result)
    plot_heatmap(mean_R, out / "continual_heatmap.png", f"accuracy after each self-edit ({cfg.mode}, {cfg.orders} orders)")
    lines = ["| after step | " + " | ".join(f"p{i + 1}" for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for t in range(n):
        lines.append(f"| {t + 1} | " + " | ".join("" if np.isnan(v) else f"{v:.2f}" for v in mean_R[t]) + " |")
    lines.append("")
    lines.append(f"final mean accuracy {summary['final_mean']:.3f}, forgetting {summary['forgetting']:.3f}, "
                 f"backward transfer {summary['backward_transfer']:+.3f} (means over {cfg.orders} orders)")
    md = "\n".join(lines) + "\n"
    run.write_text("continual.md", md)
    print(md)
    print(f"outputs: {out}/continual.md, continual.json, continual_heatmap.png")
    return result


def _accumulate(engine: Engine, mode: str, slot: int) -> None:
    if mode == "merge":
        engine.lora.merge_into_base(slot)
    else:
        engine.lora.stacked.append(slot)
