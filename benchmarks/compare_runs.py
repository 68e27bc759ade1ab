"""Rewards of two `seal knowledge train` runs of the same self-edits, evaluation by evaluation.

For runs that share their self-edits (the second's sampling units copied from the first, or the same
sampling code and seeds), pairs every evaluation unit of a round by its key and prints: the no-update
baseline and mean reward of each run, how many rewards are equal, their Pearson and Spearman correlations,
how many passages pick the same top-1 self-edit, a paired bootstrap 95% CI of the mean reward difference
(b - a), resampling passages, and what b's top-1 picks (the outer loop's `select`) are worth under a's rewards
against a's own picks and a random pick. Use it to check that a change meant to be speed-only (a dtype, a kernel)
costs no reward, or how well a cheaper inner loop (b) ranks self-edits for the full one (a).

    python benchmarks/compare_runs.py runs/rl9 runs/rl11-same [--round 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seal_lm.outer_loop import select
from seal_lm.runs import read_units
from seal_lm.stats import bootstrap_ci


def eval_units(run: Path, rnd: int) -> dict[str, dict]:
    return {k: u for k, u in read_units(run / "units.jsonl").items() if k.startswith(f"r{rnd}/eval/")}


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = sum((a - mx) ** 2 for a in x) ** 0.5
    sy = sum((b - my) ** 2 for b in y) ** 0.5
    return sxy / (sx * sy) if sx and sy else float("nan")


def ranks(x: list[float]) -> list[float]:
    """Ranks from 0, ties given their average rank (for Spearman's correlation)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in order[i:j + 1]:
            out[t] = (i + j) / 2
        i = j + 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--round", type=int, default=1)
    args = ap.parse_args(argv)
    ua, ub = eval_units(args.a, args.round), eval_units(args.b, args.round)
    keys = sorted(set(ua) & set(ub))
    if not keys:
        raise SystemExit(f"no r{args.round}/eval/* unit in both runs")
    score = lambda u: float(u.get("score") or 0.0)  # noqa: E731 (invalid self-edits score 0, as in selection)
    base = [k for k in keys if k.split("/")[3] == "base"]
    upd = [k for k in keys if k.split("/")[3] != "base"]
    sa, sb = [score(ua[k]) for k in upd], [score(ub[k]) for k in upd]
    print(f"{len(upd)} paired evaluations, {len(base)} baselines (only in a: {len(set(ua) - set(ub))}, "
          f"only in b: {len(set(ub) - set(ua))})")
    for name, u in ((args.a, ua), (args.b, ub)):
        mb = sum(score(u[k]) for k in base) / max(len(base), 1)
        mu = sum(score(u[k]) for k in upd) / max(len(upd), 1)
        print(f"{name}: baseline {mb:.3f}, mean reward {mu:.3f}")
    same = sum(1 for x, y in zip(sa, sb) if abs(x - y) < 1e-9)
    print(f"equal rewards: {same}/{len(upd)}; Pearson {pearson(sa, sb):.2f}; Spearman {pearson(ranks(sa), ranks(sb)):.2f}")
    by_passage: dict[str, list[str]] = {}
    for k in upd:
        by_passage.setdefault(k.split("/")[2], []).append(k)
    # ties go to the later sample here (kept so that the numbers in docs/RESULTS.md reproduce); the pick-value
    # line below uses the outer loop's own rule (the earlier sample)
    top = sum(1 for ks in by_passage.values()
              if max(ks, key=lambda k: (score(ua[k]), k)) == max(ks, key=lambda k: (score(ub[k]), k)))
    print(f"same top-1 pick: {top}/{len(by_passage)} passages")
    # resampled by passage: a passage's evaluations share its questions, so they are not independent
    diffs = [sum(score(ub[k]) - score(ua[k]) for k in ks) / len(ks) for ks in by_passage.values()]
    ci = bootstrap_ci(diffs)
    print(f"mean reward difference (b - a): {ci.mean:+.3f}, 95% CI over passages [{ci.low:+.3f}, {ci.high:+.3f}]")
    # one reward per (passage, self-edit): the mean over its seeds, as the outer loop selects on
    rewards = {}
    for name, u in (("a", ua), ("b", ub)):
        per: dict[str, dict[int, list[float]]] = {}
        for k in upd:
            per.setdefault(k.split("/")[2], {}).setdefault(int(k.split("/")[3]), []).append(score(u[k]))
        rewards[name] = {c: [(j, sum(v) / len(v)) for j, v in sorted(js.items())] for c, js in per.items()}
    worth = {}
    for name in ("a", "b"):
        kept = select(rewards[name], {c: None for c in rewards[name]}, "top1")
        worth[name] = sum(dict(rewards["a"][c])[js[0]] for c, js in kept.items()) / len(kept)
    rand = sum(sum(r for _, r in rs) / len(rs) for rs in rewards["a"].values()) / len(rewards["a"])
    print(f"a's reward of the top-1 picks: b's {worth['b']:.3f}, a's own {worth['a']:.3f}, a random pick {rand:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
