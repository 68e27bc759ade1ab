"""Lockstep training steps of a finished round's self-edits, with job groups in list order and by length.

A group of adapters trains until its longest plan is done (Engine.train), so its step count is the longest
plan's. This rebuilds the round's evaluation jobs (the recorded self-edits, in the evaluator's order) and
counts, with `inner_loop.group_jobs` itself: adapter-steps, lockstep steps in list order, with the default
length grouping (windows of 4 x slots), and with one window over all jobs. No model is run.

    python benchmarks/lockstep_steps.py runs/s8-new-local [--round 1] [--slots N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from inner_loop import load_knowledge_run  # noqa: E402

from seal_lm.inner_loop import EvaluatorSpec, Job, group_jobs  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--slots", type=int, default=None, help="adapters per group (default: the run's --slots)")
    args = ap.parse_args(argv)
    cfg, units, passages, domain, _ = load_knowledge_run(Path(args.run))
    cfg.slots = args.slots or cfg.slots
    spec = EvaluatorSpec(model=cfg.model, domain=domain, train=cfg.train, n_slots=cfg.slots)
    jobs = [Job(f"{key}/{i}", passages[key.split("/")[2]], text)
            for key, u in units.items() if key.startswith(f"r{args.round}/gen/")
            for i, text in enumerate(u["self_edits"])]
    steps = {j.key: spec.training_steps(j) for j in jobs}
    trained = [j for j in jobs if steps[j.key]]

    def lockstep(groups):
        return sum(max(steps[j.key] for j in g) for g in groups if g)

    in_order = lockstep(group_jobs(trained, cfg.slots))
    by_length = lockstep(group_jobs(trained, cfg.slots, spec.training_steps))
    whole = sum(max(sorted((steps[j.key] for j in trained), reverse=True)[i:i + cfg.slots])
                for i in range(0, len(trained), cfg.slots))
    total = sum(steps.values())
    print(f"{len(trained)} self-edits, {cfg.slots} slots: {total} adapter-steps; lockstep steps in list order "
          f"{in_order} ({total / in_order:.1f} adapters active per step), grouped by length {by_length}, "
          f"sorted whole {whole}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
