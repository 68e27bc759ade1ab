"""The `seal` command. Each subcommand's flags are the fields of its config dataclass."""

from __future__ import annotations

import argparse
import sys
from . import config as C


def _demo_config():
    """`seal demo`: the embedded model on the packaged fictional passages, CPU, well under 15 minutes.

    Cheaper than the paper's 10 epochs at lr 1e-3 (see docs/RESULTS.md for what this costs in
    accuracy): the self-edits are capped at 12 lines and trained 5 epochs at a higher learning rate."""
    from .engine import GenerationConfig, TrainConfig
    from .knowledge.eval_config import KnowledgeEvalConfig
    from .lora import LoRAConfig

    return KnowledgeEvalConfig(
        data="demo", k=2, conditions=["base", "passage", "own"], slots=4, max_sequences=12,
        lora=LoRAConfig(r=16, alpha=32), train=TrainConfig(learning_rate=1e-3, epochs=5, batch_size=2),
        generation=GenerationConfig(max_new_tokens=160, temperature=1.0, top_p=0.95, batch_size=16),
        device="cpu", dtype="float32", out="runs/demo",
    )


def _add_config(sub, name: str, cls, help: str, defaults=None):
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--config", help="YAML file with any of the fields below (flags override it)")
    C.add_arguments(p, cls)
    p.set_defaults(_cls=cls, _defaults=defaults)
    return p


def _resolve(args):
    """defaults (the command's own, e.g. the demo's) < --config YAML < flags."""
    ns = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})
    return C.resolve(args._cls, ns, defaults=args._defaults() if args._defaults is not None else None)


def main(argv: list[str] | None = None) -> int:
    from .knowledge.eval_config import KnowledgeEvalConfig

    parser = argparse.ArgumentParser(prog="seal", description="SEAL: self-adapting language models")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_config(sub, "demo", KnowledgeEvalConfig,
                "Run the knowledge-incorporation table on the embedded model and the packaged fictional passages.",
                defaults=_demo_config)

    gc = sub.add_parser("grade-check", help="Agreement of the local grader with GPT-4.1 verdicts.")
    gc.add_argument("file", help="JSON list of {question, gold, prediction, judge_correct}")

    kn = sub.add_parser("knowledge", help="Knowledge incorporation (SQuAD-style passages).")
    ksub = kn.add_subparsers(dest="subcommand", required=True)
    ev = _add_config(ksub, "eval", KnowledgeEvalConfig,
                     "Table: base / passage / own self-edits / external self-edits / generators, with 95% CIs.")
    ev.add_argument("--generator", dest="generators", nargs="+", default=argparse.SUPPRESS,
                    help="alias of --generators: ReST-EM round directories or checkpoints (rows 'SEAL round i')")
    from .knowledge.continual import ContinualConfig
    from .knowledge.train import KnowledgeTrainConfig

    _add_config(ksub, "train", KnowledgeTrainConfig,
                "ReST-EM: rounds of sampling self-edits, inner-loop rewards, selection and generator SFT.")
    cp = _add_config(ksub, "cpt", KnowledgeEvalConfig,
                     "Continued pretraining: all passages and their self-edits train one adapter per condition.")
    cp.add_argument("--generator", dest="generators", nargs="+", default=argparse.SUPPRESS, help="alias of --generators")
    _add_config(ksub, "continual", ContinualConfig,
                "Sequential self-edits over N passages: accuracy matrix, forgetting, backward transfer.")

    from .arc.arc_config import ArcEvalConfig, ArcTrainConfig

    arc = sub.add_parser("arc", help="Few-shot ARC: self-edits are test-time-training recipes.")
    asub = arc.add_subparsers(dest="subcommand", required=True)
    _add_config(asub, "eval", ArcEvalConfig, "Success rate per condition: icl, default, ttt, seal, oracle.")
    _add_config(asub, "train", ArcTrainConfig, "ReST-EM on ARC training tasks: keep recipes that solved their task.")

    args = parser.parse_args(argv)
    try:
        if args.command == "grade-check":
            from .knowledge.grading import grade_check

            m = grade_check(args.file)
            print(f"verdicts: {m['n']}")
            print(f"precision: {m['precision']:.3f}")
            print(f"recall: {m['recall']:.3f}")
            print(f"agreement: {m['agreement']:.3f}")
            return 0
        cfg = _resolve(args)
        if args.command == "demo" or (args.command == "knowledge" and args.subcommand == "eval"):
            from .knowledge.eval_table import run_eval

            title = "seal demo: fictional passages, embedded model" if args.command == "demo" else \
                "Knowledge incorporation (no-context QA accuracy)"
            run_eval(cfg, title=title)
            return 0
        if args.command == "knowledge" and args.subcommand == "train":
            from .knowledge.train import run_train

            run_train(cfg)
            return 0
        if args.command == "knowledge" and args.subcommand == "cpt":
            from .knowledge.cpt import run_cpt

            run_cpt(cfg)
            return 0
        if args.command == "knowledge" and args.subcommand == "continual":
            from .knowledge.continual import run_continual

            run_continual(cfg)
            return 0
        if args.command == "arc":
            from .arc.experiments import run_arc_eval, run_arc_train

            (run_arc_eval if args.subcommand == "eval" else run_arc_train)(cfg)
            return 0
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"seal: error: {e}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    sys.exit(main())
