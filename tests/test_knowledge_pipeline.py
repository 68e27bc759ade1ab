"""End-to-end knowledge pipeline on tiny-random: eval table, resume, CPT, continual, ReST-EM."""

import json
from pathlib import Path

import pytest

from seal_lm.engine import GenerationConfig, TrainConfig
from seal_lm.knowledge.eval_config import KnowledgeEvalConfig
from seal_lm.lora import LoRAConfig

FIX = Path(__file__).parent / "fixtures" / "knowledge"


def _cfg(tmp_path, **kw):
    base = dict(data=str(FIX / "tiny_squad.json"), model="tiny-random", k=2, lora=LoRAConfig(r=2, alpha=4),
                train=TrainConfig(epochs=1, batch_size=2),
                generation=GenerationConfig(max_new_tokens=12, batch_size=8), answer_tokens=4, slots=3,
                device="cpu", dtype="float32", out=str(tmp_path / "run"), progress=False)
    base.update(kw)
    return KnowledgeEvalConfig(**base)


def test_eval_table_end_to_end_and_resume(tmp_path, monkeypatch):
    from seal_lm.knowledge import eval_table
    from seal_lm.inner_loop import SelfEditEvaluator

    cfg = _cfg(tmp_path, external=str(FIX / "tiny_squad.json"))
    table = eval_table.run_eval(cfg)
    out = tmp_path / "run"
    for f in ("table.md", "table.csv", "table.json", "per_passage.json", "units.jsonl", "config.yaml"):
        assert (out / f).exists(), f
    conds = [r["condition"] for r in table["rows"]]
    assert conds[:4] == ["base", "passage", "own", "own (best of K, oracle)"] and "external" in conds
    # external restricts to the 2 passages that have completions
    base_row = table["rows"][0]
    assert base_row["passages"] == 2 and base_row["questions"] == 4
    units = (out / "units.jsonl").read_text().splitlines()
    n_ext = sum(min(2, len(p.get("completions", []))) for p in json.loads((FIX / "tiny_squad.json").read_text()))
    # 2 gen + 2 base + 2 passage + 2x2 own + external completions (at most k per passage)
    assert len(units) == 2 + 2 + 2 + 4 + n_ext
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in table["rows"])

    # Rerunning the same command does no work: no training, no sampling.
    calls = []
    monkeypatch.setattr(SelfEditEvaluator, "run", lambda self, jobs: calls.append(jobs) or [])
    monkeypatch.setattr(SelfEditEvaluator, "sample_self_edits", lambda *a, **k: calls.append(a))
    again = eval_table.run_eval(cfg)
    assert calls == []
    assert again["rows"] == table["rows"]
    assert len((out / "units.jsonl").read_text().splitlines()) == len(units)


def test_crash_mid_run_resumes_only_missing_units(tmp_path, monkeypatch):
    from seal_lm.inner_loop import SelfEditEvaluator
    from seal_lm.knowledge import eval_table

    cfg = _cfg(tmp_path, conditions=["base", "passage"], slots=1)
    real_run = SelfEditEvaluator.run
    n = {"groups": 0}

    def crashing(self, jobs):
        n["groups"] += 1
        if n["groups"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_run(self, jobs)

    monkeypatch.setattr(SelfEditEvaluator, "run", crashing)
    with pytest.raises(KeyboardInterrupt):
        eval_table.run_eval(cfg)
    done_before = len((tmp_path / "run" / "units.jsonl").read_text().splitlines())
    assert done_before == 3 + 1  # the base group (3 jobs) and one passage-only group finished
    seen = []

    def counting(self, jobs):
        seen.extend(j.key for j in jobs)
        return real_run(self, jobs)

    monkeypatch.setattr(SelfEditEvaluator, "run", counting)
    eval_table.run_eval(cfg)
    assert len(seen) == 2  # only the two passage-only jobs that had not finished
    assert len((tmp_path / "run" / "units.jsonl").read_text().splitlines()) == 6


def test_garbled_self_edit_gets_zero_reward_not_a_crash(tiny):
    from seal_lm.inner_loop import EvaluatorSpec, Job, SelfEditEvaluator
    from seal_lm.knowledge.data import load_passages
    from seal_lm.knowledge.domain import KnowledgeDomain

    p = load_passages(FIX / "tiny_squad.json")[0]
    ev = SelfEditEvaluator.__new__(SelfEditEvaluator)
    from seal_lm.engine import Engine

    ev.spec = EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(answer=GenerationConfig(max_new_tokens=3, temperature=0)),
                            train=TrainConfig(epochs=1), n_slots=2)
    ev.domain = ev.spec.domain
    ev.engine = Engine(tiny, 2, LoRAConfig(r=2, alpha=4))
    ev.progress = False
    res = ev.run([Job("empty", p, "   \n  "), Job("ok", p, "Line one.\nLine two.")])
    assert res[0].valid is False and res[0].score == 0.0 and "no usable lines" in res[0].reason
    assert res[1].valid and res[1].train_tokens > 0


def test_cpt_and_continual(tmp_path):
    from seal_lm.knowledge.continual import ContinualConfig, run_continual
    from seal_lm.knowledge.cpt import run_cpt

    table = run_cpt(_cfg(tmp_path, conditions=["base", "passage", "own", "external"],
                         external=str(FIX / "tiny_squad.json"), out=str(tmp_path / "cpt")))
    assert [r["condition"] for r in table["rows"]] == ["base", "passage", "own", "external"]
    assert all(r["questions"] == 4 for r in table["rows"])
    for r in table["rows"]:  # per-passage CI: 2 passages with 2 questions each -> the question mean
        assert r["ci_low"] <= r["passage_mean"] <= r["ci_high"]
        assert abs(r["passage_mean"] - r["accuracy"]) < 1e-9
    assert "95% CI" in (tmp_path / "cpt" / "table.md").read_text()

    for mode in ("merge", "stack"):
        res = run_continual(ContinualConfig(
            data=str(FIX / "tiny_squad.json"), passages=3, orders=2, mode=mode, model="tiny-random",
            lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=1), generation=GenerationConfig(max_new_tokens=8),
            answer_tokens=3, device="cpu", dtype="float32", out=str(tmp_path / f"cont-{mode}"), progress=False))
        assert len(res["matrices"]) == 2 and len(res["mean_matrix"]) == 3
        assert (tmp_path / f"cont-{mode}" / "continual_heatmap.png").exists()
        assert set(res["summary"]) == {"final_mean", "backward_transfer", "forgetting"}


def test_rest_em_two_rounds_and_resume(tmp_path):
    from seal_lm.knowledge.train import KnowledgeTrainConfig, run_train

    cfg = KnowledgeTrainConfig(
        data=str(FIX / "tiny_squad.json"), rounds=2, passages_per_round=1, k=2, model="tiny-random",
        lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=1), sft_lora=LoRAConfig(r=2, alpha=4),
        sft=TrainConfig(epochs=1, learning_rate=1e-3), generation=GenerationConfig(max_new_tokens=8),
        answer_tokens=3, slots=2, device="cpu", dtype="float32", out=str(tmp_path / "rl"), progress=False)
    summaries = run_train(cfg)
    assert [s.round for s in summaries] == [1, 2]
    r1 = tmp_path / "rl" / "round-1"
    assert (r1 / "generator" / "config.json").exists() and (r1 / "sft.jsonl").exists()
    rows = [json.loads(l) for l in (r1 / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert (tmp_path / "rl" / "rewards.png").exists()
    # round 2 sampled from round 1's generator
    assert summaries[1].generator.endswith("round-1/generator")
    again = run_train(cfg)  # everything finished: resumes to the same summaries without work
    assert [s.to_dict() for s in again] == [s.to_dict() for s in summaries]


@pytest.mark.parametrize("generator_learns", [True, False])
def test_seal_rows_update_the_generator_itself_by_default(tmp_path, monkeypatch, tiny, generator_learns):
    from seal_lm.inner_loop import SelfEditEvaluator
    from seal_lm.knowledge import eval_table

    gen = tmp_path / "rl" / "round-1" / "generator"
    tiny.model.save_pretrained(gen)
    tiny.tokenizer.save_pretrained(gen)
    ran: dict[str, set] = {}
    real_run = SelfEditEvaluator.run

    def spy(self, jobs):
        for j in jobs:
            ran.setdefault(j.key.split("/")[1], set()).add(self.spec.model)
        return real_run(self, jobs)

    monkeypatch.setattr(SelfEditEvaluator, "run", spy)
    cfg = _cfg(tmp_path, k=1, conditions=["base", "passage"], generators=[str(tmp_path / "rl" / "round-1")],
               generator_learns=generator_learns)
    table = eval_table.run_eval(cfg)
    assert [r["condition"] for r in table["rows"]][:3] == ["base", "passage", "SEAL round 1"]
    assert ran["base"] == ran["passage"] == {"tiny-random"}
    assert ran["SEAL round 1"] == ({str(gen)} if generator_learns else {"tiny-random"})
