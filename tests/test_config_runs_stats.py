"""Dataclass configs (YAML + flags), run directories (resume), bootstrap CIs."""

import argparse
import json

import numpy as np
import pytest

from seal_lm import config as C
from seal_lm.knowledge.eval_config import KnowledgeEvalConfig
from seal_lm.runs import RunDir
from seal_lm.stats import bootstrap_ci


def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    C.add_arguments(p, KnowledgeEvalConfig)
    return p.parse_args(argv)


def test_flags_yaml_and_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("k: 7\ntrain:\n  epochs: 3\nlora:\n  r: 8\n")
    cfg = C.resolve(KnowledgeEvalConfig, _parse(["--config", str(y), "--train.epochs", "4", "--passages", "5",
                                                 "--conditions", "base", "own"]))
    assert cfg.k == 7 and cfg.train.epochs == 4 and cfg.lora.r == 8 and cfg.passages == 5
    assert cfg.conditions == ["base", "own"] and cfg.train.learning_rate == 1e-3
    again = C.from_dict(KnowledgeEvalConfig, C.to_dict(cfg))
    assert again == cfg


def test_bad_config_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        C.from_dict(KnowledgeEvalConfig, {"kk": 1})
    with pytest.raises(ValueError, match="'k' has a bad value"):
        C.from_dict(KnowledgeEvalConfig, {"k": "many"})
    y = tmp_path / "c.yaml"
    y.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        C.resolve(KnowledgeEvalConfig, _parse(["--config", str(y)]))


def test_run_dir_resume_and_truncated_line(tmp_path):
    cfg = KnowledgeEvalConfig(k=2)
    run = RunDir(tmp_path / "r", cfg)
    run.record("a", {"score": 1.0})
    run.record("b", {"score": 0.5})
    with open(run.units_path, "a") as f:
        f.write('{"unit": "c", "sco')  # a crash mid-write
    again = RunDir(tmp_path / "r", cfg)
    assert again.done("a") and again.done("b") and not again.done("c")
    assert again.get("b")["score"] == 0.5
    with pytest.raises(ValueError, match="different config"):
        RunDir(tmp_path / "r", KnowledgeEvalConfig(k=3))
    assert json.loads((tmp_path / "r" / "units.jsonl").read_text().splitlines()[0])["unit"] == "a"


def test_bootstrap_ci():
    ci = bootstrap_ci([0.0, 1.0] * 50, seed=0)
    assert ci.mean == pytest.approx(0.5) and ci.low < 0.5 < ci.high and ci.n == 100
    assert 0.35 < ci.low and ci.high < 0.65  # ~ +-1.96 * 0.05
    const = bootstrap_ci([0.3, 0.3, 0.3])
    assert const.low == const.high == pytest.approx(0.3)
    assert bootstrap_ci([]).n == 0 and np.isnan(bootstrap_ci([None]).mean)
    assert bootstrap_ci([0.2, 0.9, 0.4], seed=1) == bootstrap_ci([0.2, 0.9, 0.4], seed=1)


def test_nested_flag_keeps_the_fields_own_defaults():
    from seal_lm.knowledge.train import KnowledgeTrainConfig

    cfg = C.from_dict(KnowledgeTrainConfig, {"sft": {"epochs": 1}, "generation": {"max_new_tokens": 9}})
    assert cfg.sft.epochs == 1 and cfg.sft.learning_rate == 3e-4 and cfg.sft.max_seq_len == 1024
    assert cfg.generation.max_new_tokens == 9 and cfg.generation.top_p == 0.95


def test_cli_demo_defaults_yaml_and_flags(tmp_path):
    import argparse as ap

    from seal_lm.cli import _demo_config, _resolve

    y = tmp_path / "d.yaml"
    y.write_text("k: 5\n")
    args = ap.Namespace(command="demo", config=str(y), _cls=KnowledgeEvalConfig, _defaults=_demo_config,
                        **{"train.epochs": 2})
    cfg = _resolve(args)
    demo = _demo_config()
    assert cfg.k == 5 and cfg.train.epochs == 2 and cfg.max_sequences == demo.max_sequences
    assert cfg.lora == demo.lora and cfg.data == "demo"
