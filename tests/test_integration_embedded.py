"""Integration tests on the real embedded SmolLM2-135M-Instruct (select with -m integration)."""

import pytest

from seal_lm.engine import Engine, GenerationConfig, TrainConfig
from seal_lm.knowledge.data import load_passages
from seal_lm.knowledge.domain import KnowledgeDomain
from seal_lm.lora import LoRAConfig

pytestmark = pytest.mark.integration


def test_embedded_model_loads_from_cache_and_answers(embedded):
    from seal_lm.models import cache_dir

    assert (cache_dir() / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert sum(p.numel() for p in embedded.model.parameters()) > 100_000_000
    engine = Engine(embedded, n_slots=1, lora=LoRAConfig(r=8, alpha=16))
    out, n = engine.generate([engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)],
        GenerationConfig(max_new_tokens=12, temperature=0.0))
    assert "Paris" in out[0] and n > 0


def test_inner_loop_incorporates_facts_and_reset_restores_answers(embedded):
    """Training on a fictional passage's question-answer pairs (an upper bound on what a self-edit can
    do) makes the model answer them without the passage; resetting the adapter restores the base."""
    passage = load_passages("demo")[0]
    domain = KnowledgeDomain(answer=GenerationConfig(max_new_tokens=16, temperature=0.0, batch_size=8))
    engine = Engine(embedded, n_slots=2, lora=LoRAConfig(r=16, alpha=32))
    base = domain.evaluate(engine, [passage], [None])[0]
    qa = "\n".join(f"{q.question} {q.answer}." for q in passage.questions)
    plan = domain.training_plan(passage, qa, seed=0)
    stats = engine.train([plan], TrainConfig(learning_rate=1e-3, epochs=8, batch_size=2), progress=False)
    assert stats.losses[0][-1] < stats.losses[0][0] / 2
    adapted = domain.evaluate(engine, [passage], [0])[0]
    assert adapted["score"] >= 0.6 > base["score"]
    engine.lora.reset()
    after = domain.evaluate(engine, [passage], [0])[0]
    assert [a["prediction"] for a in after["answers"]] == [a["prediction"] for a in base["answers"]]


def test_seal_cli_grade_check_and_help(tmp_path, capsys):
    import json

    from seal_lm.cli import main

    f = tmp_path / "v.json"
    f.write_text(json.dumps([{"question": "Who?", "gold": "Oda Pellinen", "prediction": "Oda Pellinen", "judge_correct": True},
                             {"question": "When?", "gold": "1874", "prediction": "1902", "judge_correct": False}]))
    assert main(["grade-check", str(f)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "agreement: 1.000"
    assert main(["knowledge", "eval", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_embedded_model_writes_valid_arc_recipes_when_constrained(embedded):
    """Free-form, the 135M model almost never writes a parseable recipe; constrained, every sample is one."""
    from pathlib import Path

    from seal_lm.arc.data import load_kaggle
    from seal_lm.arc.domain import ArcDomain
    from seal_lm.arc.recipe import parse_recipe

    fix = Path(__file__).parent / "fixtures" / "arc"
    task = load_kaggle(fix / "tiny_challenges.json", fix / "tiny_solutions.json")[0]
    domain = ArcDomain(recipe_learning_rates=(1e-4, 1e-3), recipe_epochs=(1, 2))
    engine = Engine(embedded, n_slots=1, lora=LoRAConfig(r=4, alpha=8))
    prompt = domain.self_edit_prompt(engine.tokenizer, task)
    cfg = GenerationConfig(max_new_tokens=120, temperature=0.8, top_p=1.0, batch_size=3)
    texts, _ = engine.generate([prompt] * 3, cfg, seed=0, constraint=engine.constraint(domain.self_edit_choices()))
    recipes = [parse_recipe(t)[0] for t in texts]
    assert all(r is not None and r.learning_rate in (1e-4, 1e-3) and r.num_train_epochs in (1, 2) for r in recipes)
