"""The ARC domain: recipe -> training plan (validity, compute cap, loss masking), pass@2 evaluation."""

from pathlib import Path

import pytest

from seal_lm.arc.data import ArcExample, ArcTask, load_kaggle
from seal_lm.arc.domain import MAX_ANSWER_TOKENS, ArcDomain, answer_token_bound
from seal_lm.arc.grids import format_completion
from seal_lm.arc.recipe import DEFAULT_RECIPE, Recipe
from seal_lm.arc.ttt_data import inference_views
from seal_lm.engine import Engine, TrainConfig

FIX = Path(__file__).parent / "fixtures" / "arc"
OUT = Recipe(True, False, False, False, "train_using_output_tokens", 1e-3, 2)
ALL = Recipe(True, False, False, False, "train_using_all_tokens", 5e-4, 3)


@pytest.fixture(scope="module")
def tasks() -> list[ArcTask]:
    return load_kaggle(FIX / "tiny_challenges.json", FIX / "tiny_solutions.json")


def test_plan_output_tokens_masks_prompt(tasks, tiny):
    dom = ArcDomain(max_examples=20, eos_text="<|im_end|>")
    plan = dom.training_plan(tasks[0], OUT.to_json(), seed=3)
    assert not isinstance(plan, str)
    assert (plan.learning_rate, plan.epochs, plan.seed) == (1e-3, 2, 3)
    assert 3 < len(plan.examples) <= 20
    eng = Engine(tiny, n_slots=1)
    for prompt, completion in plan.examples:
        assert prompt.endswith("output:\n") and completion.endswith("\n<|im_end|>")
        ids, labels = eng.encode_example(prompt, completion, 4096)
        n_prompt = len(eng.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert all(x == -100 for x in labels[:n_prompt])  # loss on the answer grid only
        assert all(x != -100 for x in labels[n_prompt:]) and labels[-1] == eng.tokenizer.eos_token_id


def test_plan_all_tokens_trains_whole_sequence(tasks, tiny):
    plan = ArcDomain(max_examples=10).training_plan(tasks[0], f"Sure! ```json\n{ALL.to_json()}\n```", seed=0)
    assert not isinstance(plan, str) and (plan.learning_rate, plan.epochs) == (5e-4, 3)
    eng = Engine(tiny, n_slots=1)
    for prompt, completion in plan.examples:
        assert prompt == "" and completion.startswith("input:\n")
        assert -100 not in eng.encode_example(prompt, completion, 4096)[1]


def test_plan_default_recipe_and_invalid(tasks):
    dom = ArcDomain(max_examples=50)
    plan = dom.training_plan(tasks[0], None, seed=0)
    assert (plan.learning_rate, plan.epochs) == (DEFAULT_RECIPE.learning_rate, DEFAULT_RECIPE.num_train_epochs)
    for garbage in ["", "no json here", "{\"training\": 3}", "{" * 5000, "{\"use_basic_augmentations\": 1}"]:
        reason = dom.training_plan(tasks[0], garbage, seed=0)
        assert isinstance(reason, str) and reason.startswith("invalid recipe:")


def test_plan_compute_cap(tasks):
    big = Recipe(True, True, True, True, "train_using_output_tokens", 1e-4, 100)
    reason = ArcDomain(max_examples=50, max_epoch_examples=400).training_plan(tasks[0], big.to_json(), seed=0)
    assert isinstance(reason, str) and "compute cap" in reason
    ok = Recipe(True, False, False, False, "train_using_output_tokens", 1e-4, 1)
    assert not isinstance(ArcDomain(max_examples=50, max_epoch_examples=400).training_plan(tasks[0], ok.to_json(), 0), str)


def test_plan_needs_two_demos():
    one = ArcTask("one", [ArcExample([[1]], [[2]])], [ArcExample([[3]], [[4]])])
    assert "demonstration" in ArcDomain().training_plan(one, None, seed=0)


def test_self_edit_prompt_uses_chat_template(tasks, tiny):
    p = ArcDomain().self_edit_prompt(tiny.tokenizer, tasks[0])
    assert "<|im_start|>user" in p and p.rstrip().endswith("assistant") and "use_size_augmentations" in p
    assert ArcDomain().context_id(tasks[1]) == "bbbb0002"


def test_answer_token_bound(tasks):
    for t in tasks:
        need = max(len(ex.output) * len(ex.output[0]) + len(ex.output) for ex in t.test)
        assert need <= answer_token_bound(t) and answer_token_bound(t) >= 16
    huge = ArcTask("h", [ArcExample([[0] * 30] * 30, [[0] * 30] * 30)], [ArcExample([[0] * 30] * 30, [[0] * 30] * 30)])
    assert answer_token_bound(huge) == MAX_ANSWER_TOKENS


class ScriptedEngine:
    """Returns, per prompt, a scripted completion (the correct answer in the view's frame, or junk)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls = []

    def generate(self, prompts, cfg, adapters=None, **kw):
        self.calls.append((list(prompts), list(adapters), cfg))
        return [self.answers.get(p, "7\n77\nx{]") for p in prompts], 0


def test_evaluate_pass_at_2_logic(tasks):
    dom = ArcDomain(n_views=3)
    answers = {}
    for t in tasks[1:]:  # bbbb0002 (two tests): every view answers correctly in its own frame
        for i, ex in enumerate(t.test):
            for v in inference_views(t, 3, test_index=i):
                answers[v.prompt] = format_completion(v.transform.apply(ex.output)) + "input:\n12"
    eng = ScriptedEngine(answers)
    res = dom.evaluate(eng, tasks, [None, 1])
    assert len(eng.calls) == 1  # one batched decode for all views of all tasks
    prompts, adapters, cfg = eng.calls[0]
    assert cfg.temperature == 0.0 and adapters.count(None) == 3 and adapters.count(1) == 6
    assert [r["score"] for r in res] == [0.0, 1.0]
    assert res[1]["solved"] and all(t["correct"] and t["votes"] == [3] for t in res[1]["tests"])
    assert res[0]["tests"][0]["n_parsed"] == 0 and res[0]["tests"][0]["top2"] == []


def test_evaluate_unknown_output_is_unscored():
    t = ArcTask("u", [ArcExample([[1]], [[2]]), ArcExample([[3]], [[4]])], [ArcExample([[5]])])
    assert ArcDomain(n_views=2).evaluate(ScriptedEngine({}), [t], [None])[0]["score"] is None


def test_evaluate_end_to_end_tiny(tasks, tiny):
    """A real (random) model: train one adapter, score adapted and unadapted rows together."""
    dom = ArcDomain(n_views=2, max_examples=6, eos_text="<|im_end|>")
    eng = Engine(tiny, n_slots=2)
    plan = dom.training_plan(tasks[0], OUT.to_json(), seed=0)
    eng.train([plan], TrainConfig(batch_size=2, max_seq_len=512), progress=False)
    res = dom.evaluate(eng, tasks, [0, None])
    assert [r["score"] in (0.0, 1.0) for r in res] == [True, True]
    assert all(len(r["tests"]) == len(t.test) for r, t in zip(res, tasks))
    assert all(r["answer_s"] > 0 for r in res)
