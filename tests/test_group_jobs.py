"""Job groups: baselines first, updating jobs grouped by training length within windows of 4 * n_slots."""

from pathlib import Path

import pytest
import torch

from seal_lm.engine import GenerationConfig, TrainConfig
from seal_lm.inner_loop import EvaluatorSpec, Job, SelfEditEvaluator, group_jobs
from seal_lm.knowledge.data import Passage, Question, load_passages
from seal_lm.knowledge.domain import KnowledgeDomain
from seal_lm.lora import LoRAConfig


def test_groups_by_training_length_within_windows():
    jobs = [Job("base/0", None, update=False)] + [Job(f"e{i}", None, seed=i) for i in range(10)]
    steps = {f"e{i}": s for i, s in enumerate([5, 35, 5, 10, 10, 25, 5, 5, 30, 5])}
    plain = group_jobs(jobs, 2)
    assert [[j.key for j in g] for g in plain] == [["base/0"], ["e0", "e1"], ["e2", "e3"], ["e4", "e5"], ["e6", "e7"], ["e8", "e9"]]
    got = [[j.key for j in g] for g in group_jobs(jobs, 2, lambda j: steps[j.key])]
    # windows of 8 updating jobs (e0-e7, then e8-e9), each sorted longest first; ties keep list order
    assert got == [["base/0"], ["e1", "e5"], ["e3", "e4"], ["e0", "e2"], ["e6", "e7"], ["e8", "e9"]]
    lockstep = lambda groups: sum(max(steps[j.key] for j in g) for g in groups[1:])  # noqa: E731
    assert lockstep(group_jobs(jobs, 2, lambda j: steps[j.key])) < lockstep(plain)


def test_training_steps_of_a_job():
    p = Passage("T", "One. Two.", [Question("q?", "a")])
    spec = EvaluatorSpec(model="tiny-random", domain=KnowledgeDomain(), train=TrainConfig(epochs=3, batch_size=2))
    # the passage plus three self-edit lines: 4 sequences, 2 minibatches per epoch
    assert spec.training_steps(Job("a", p, "line one\nline two\nline three")) == 3 * 2
    assert spec.training_steps(Job("b", p, "   ")) == 0  # no usable lines: invalid, scored 0 untrained
    assert spec.training_steps(Job("c", p, update=False)) == 0


def test_results_do_not_depend_on_which_jobs_share_a_group():
    """A job's training and answers are its own whoever shares its group: the length grouping only changes the
    schedule (session 8 saw rewards drop with it in one bf16 processes run; this pins the fp32 logic)."""

    class ProbedDomain(KnowledgeDomain):
        """The knowledge evaluation plus a fingerprint of the model each job is answered with (the tiny random
        model's answers are mostly empty strings, which would not tell adapters apart)."""

        def evaluate(self, engine, contexts, slots):
            out = super().evaluate(engine, contexts, slots)
            ids = engine.tokenizer("The bridge was built by", return_tensors="pt")
            for slot, o in zip(slots, out):
                with torch.no_grad(), engine.lora.use(slot):  # (None: the bare base model)
                    o["probe"] = engine.model(**ids).logits.double().square().mean().item()
            return out

    passages = load_passages(Path(__file__).parent / "fixtures" / "knowledge" / "tiny_squad.json")
    spec = EvaluatorSpec(model="tiny-random", domain=ProbedDomain(answer=GenerationConfig(max_new_tokens=4, temperature=0.0)),
                         lora=LoRAConfig(r=2, alpha=4), train=TrainConfig(epochs=2, learning_rate=1e-2, compute_dtype="float32"),
                         n_slots=3, device="cpu", dtype="float32")
    texts = ["One fact.", "A fact.\nAnother fact.\nA third fact.\nAnd a fourth.", "Two facts.\nYes, two.",
             "A long run of facts.\nMore.\nMore again.\nStill more.\nThe last one.\nReally the last.", "Short.", "Also short."]
    jobs = [Job(f"e{i}", passages[i % len(passages)], t, seed=i) for i, t in enumerate(texts)]
    evaluator = SelfEditEvaluator(spec, progress=False)
    in_order = group_jobs(jobs, 3)
    by_length = group_jobs(jobs, 3, spec.training_steps)
    assert [[j.key for j in g] for g in in_order] != [[j.key for j in g] for g in by_length]  # really regrouped
    want = {r.key: r for g in in_order for r in evaluator.run(g)}
    got = {r.key: r for g in by_length for r in evaluator.run(g)}
    for key, r in want.items():
        assert got[key].score == r.score and got[key].details["answers"] == r.details["answers"]
        assert got[key].final_loss == pytest.approx(r.final_loss, rel=1e-5)
        assert got[key].details["probe"] == pytest.approx(r.details["probe"], rel=1e-6)
    probes = sorted(r.details["probe"] for r in want.values())
    assert all(b - a > 1e-6 * b for a, b in zip(probes, probes[1:]))  # every job's adapter answers differently
