"""`seal arc eval` / `seal arc train` on the tiny fixture with the tiny random model: tables, resume, invalid recipes."""

import json
from pathlib import Path

import pytest

from seal_lm.arc import experiments
from seal_lm.arc.arc_config import ArcEvalConfig, ArcTrainConfig
from seal_lm.arc.experiments import run_arc_eval, run_arc_train, select_tasks
from seal_lm.arc.recipe import Recipe
from seal_lm.engine import GenerationConfig, TrainConfig

FIX = Path(__file__).parent / "fixtures" / "arc"
TASKS = str(FIX / "tiny_challenges.json")


def small(**over) -> ArcEvalConfig:
    base = dict(tasks=TASKS, model="tiny-random", device="cpu", dtype="float32", n_views=2, max_examples=6,
                slots=2, train=TrainConfig(batch_size=2, max_seq_len=512), progress=False,
                generation=GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=4))
    base.update(over)
    return ArcEvalConfig(**base)


def test_select_tasks_filters_and_slices():
    assert [t.task_id for t in select_tasks(small())] == ["aaaa0001", "bbbb0002"]
    assert [t.task_id for t in select_tasks(small(offset=1))] == ["bbbb0002"]
    assert [t.task_id for t in select_tasks(small(limit=1))] == ["aaaa0001"]
    with pytest.raises(ValueError, match="no task"):
        select_tasks(small(max_grid_side=1))


def test_unknown_condition(tmp_path):
    with pytest.raises(ValueError, match="unknown condition"):
        run_arc_eval(small(conditions=["icl", "magic"], out=str(tmp_path)))


def test_icl_and_oracle_table_and_resume(tmp_path, monkeypatch):
    cfg = small(conditions=["icl", "oracle"], oracle_recipes=2, out=str(tmp_path / "run"))
    table = run_arc_eval(cfg)
    for name in ("table.md", "table.json", "per_task.json", "units.jsonl", "config.yaml"):
        assert (tmp_path / "run" / name).is_file()
    rows = {r["condition"]: r for r in table["rows"]}
    assert rows["icl"]["evaluations"] == 2 and rows["oracle"]["evaluations"] == 4
    assert rows["oracle"]["recipes_per_task"] == 2 and rows["oracle"]["invalid"] == 0
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows.values())
    assert rows["oracle"]["train_s"] > 0 and table["model_loads_this_invocation"] == 1
    per_task = json.loads((tmp_path / "run" / "per_task.json").read_text())
    rec = per_task[0]["conditions"]["oracle"]["recipes"]
    assert [r["index"] for r in rec] == [0, 1] and rec[0]["recipe"]["training"]["num_train_epochs"] == 2
    n_units = len((tmp_path / "run" / "units.jsonl").read_text().splitlines())

    # Second run: every unit is done, so no model is loaded and nothing is appended.
    def no_executor(*a, **k):
        raise AssertionError("a finished run must not load a model")

    monkeypatch.setattr(experiments, "make_executor", no_executor)
    again = run_arc_eval(cfg)
    assert again["model_loads_this_invocation"] == 0
    assert len((tmp_path / "run" / "units.jsonl").read_text().splitlines()) == n_units
    assert [r["success_rate"] for r in again["rows"]] == [r["success_rate"] for r in table["rows"]]

    # Conditions are additive: asking for icl alone reuses the same directory and still does no work.
    only_icl = run_arc_eval(small(conditions=["icl"], oracle_recipes=2, out=str(tmp_path / "run")))
    assert [r["condition"] for r in only_icl["rows"]] == ["icl"] and only_icl["model_loads_this_invocation"] == 0


def test_sampled_garbage_recipes_get_zero_with_reason(tmp_path):
    # The tiny random model writes gibberish: every recipe is invalid, rewarded 0, reason recorded.
    table = run_arc_eval(small(conditions=["ttt", "default"], k=2, out=str(tmp_path)))
    rows = {r["condition"]: r for r in table["rows"]}
    assert rows["ttt"]["invalid"] == 4 and rows["ttt"]["success_rate"] == 0.0 and rows["ttt"]["evaluations"] == 4
    assert rows["default"]["invalid"] == 0 and rows["default"]["evaluations"] == 2
    recs = json.loads((tmp_path / "per_task.json").read_text())[0]["conditions"]["ttt"]["recipes"]
    assert all(r["score"] == 0.0 and not r["valid"] and r["reason"].startswith("invalid recipe:") for r in recs)
    assert all(isinstance(r["self_edit"], str) for r in recs)


def test_seal_condition_uses_generator(tmp_path):
    # generator = the same tiny model here; the row exists and its recipes were sampled under 'seal'.
    table = run_arc_eval(small(conditions=["seal"], generator="tiny-random", k=1, limit=1, out=str(tmp_path)))
    assert table["rows"][0]["condition"] == "seal" and table["rows"][0]["evaluations"] == 1
    units = [json.loads(line)["unit"] for line in (tmp_path / "units.jsonl").read_text().splitlines()]
    assert "gen/seal/aaaa0001" in units


def test_arc_train_one_round(tmp_path):
    cfg = ArcTrainConfig(tasks=TASKS, model="tiny-random", device="cpu", dtype="float32", rounds=1,
                         tasks_per_round=2, k=2, n_views=2, max_examples=6, slots=2, progress=False,
                         train=TrainConfig(batch_size=2, max_seq_len=512),
                         generation=GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=4),
                         sft=TrainConfig(learning_rate=5e-5, epochs=1, batch_size=2, max_seq_len=1024),
                         out=str(tmp_path))
    (s,) = run_arc_train(cfg)
    assert s.contexts == 2 and s.self_edits == 4 and s.invalid == 4 and s.sft_examples == 0
    assert (tmp_path / "round-1" / "generator" / "config.json").is_file() and (tmp_path / "rounds.md").is_file()


class ScriptedSampler:
    """An executor whose recipe samples are scripted: garbage on the first draw, valid on redraws."""

    def __init__(self):
        self.calls = 0

    def sample_self_edits(self, contexts, k, cfg, seed):
        self.calls += 1
        good = Recipe(True, False, False, False, "train_using_output_tokens", 1e-4, 1).to_json()
        first = self.calls == 1
        return [[("junk" if first and j == 0 else good) for j in range(k)] for _ in contexts], 1.0, 10


def test_redraws_replace_unparseable_recipes(tmp_path):
    from seal_lm.runs import RunDir

    cfg = small(k=3, redraws=2, generation=GenerationConfig(batch_size=16))  # both tasks in one chunk
    tasks = select_tasks(cfg)
    run = RunDir(tmp_path, cfg)
    ex = ScriptedSampler()
    domain = experiments.make_domain(cfg)
    experiments._sample(ex, cfg, tasks, run, "ttt", "tiny-random", domain)
    for t in tasks:
        rec = run.get(f"gen/ttt/{t.task_id}")
        assert rec["discarded"] == 1 and "junk" not in rec["self_edits"] and len(rec["self_edits"]) == 3
    assert ex.calls == 2  # one redraw round sufficed
    experiments._sample(ex, cfg, tasks, run, "ttt", "tiny-random", domain)
    assert ex.calls == 2  # done units are never resampled
