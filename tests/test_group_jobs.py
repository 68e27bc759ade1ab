"""Job groups: baselines first, updating jobs grouped by training length within windows of 4 * n_slots."""

from seal_lm.engine import TrainConfig
from seal_lm.inner_loop import EvaluatorSpec, Job, group_jobs
from seal_lm.knowledge.data import Passage, Question
from seal_lm.knowledge.domain import KnowledgeDomain


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
