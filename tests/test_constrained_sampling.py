"""Constrained self-edit sampling (engine.TokenTrie), the shared sampling helper, and config evolution."""

import pytest

from seal_lm.arc.domain import ArcDomain
from seal_lm.arc.recipe import parse_recipe, recipe_choices, recipe_text, Recipe
from seal_lm.engine import Engine, GenerationConfig, TrainPlan
from seal_lm.inner_loop import sample_self_edit_units, self_edit_is_valid
from seal_lm.runs import RunDir


def test_recipe_choices_all_parse_and_are_distinct():
    choices = recipe_choices()
    assert len(choices) == 16 * 2 * 5 * 5 == len(set(choices))
    parsed = [parse_recipe(c)[0] for c in choices]
    assert all(r is not None for r in parsed)
    assert len({r.families().__repr__() for r in parsed}) == 16
    r = Recipe(True, False, True, False, "train_using_all_tokens", 3e-4, 4)
    assert parse_recipe(recipe_text(r))[0] == r


def test_token_trie_allowed_steps(tiny):
    engine = Engine(tiny, n_slots=1)
    strings = ["alpha beta", "alpha gamma", "delta"]
    trie = engine.constraint(strings)
    end = sorted(engine.end_token_ids)
    ids = [engine.tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]
    assert sorted(trie.allowed([])) == sorted({i[0] for i in ids})
    for seq in ids:
        for n in range(len(seq)):
            assert seq[n] in trie.allowed(seq[:n])
        assert trie.allowed(seq) == end  # a complete string may only end
    assert trie.allowed([ids[2][0], 999_999]) == end  # off the trie: only an end token
    with pytest.raises(ValueError):
        engine.constraint([])


def test_constrained_generation_only_yields_the_strings(tiny):
    engine = Engine(tiny, n_slots=1)
    strings = recipe_choices(learning_rates=(1e-4, 1e-3), epochs=(1, 2))
    trie = engine.constraint(strings)
    cfg = GenerationConfig(max_new_tokens=200, temperature=1.0, top_p=1.0, batch_size=8)
    texts, _ = engine.generate(["Write a recipe:"] * 16, cfg, seed=3, constraint=trie)
    assert all(t in strings for t in texts), texts
    assert len(set(texts)) > 1  # sampled, not one forced answer
    # Without the constraint the random model writes garbage that does not parse.
    free, _ = engine.generate(["Write a recipe:"] * 4, GenerationConfig(max_new_tokens=30, batch_size=4), seed=3)
    assert all(parse_recipe(t)[0] is None for t in free)


def test_arc_domain_constrained_choices():
    assert ArcDomain(recipe_format="free").self_edit_choices() is None
    ch = ArcDomain(recipe_learning_rates=(1e-3,), recipe_epochs=(2,)).self_edit_choices()
    assert len(ch) == 32 and all(parse_recipe(c)[0].learning_rate == 1e-3 for c in ch)
    with pytest.raises(ValueError):
        ArcDomain(recipe_format="yaml").self_edit_choices()


class _Domain:
    """Self-edits are valid when they contain 'ok'; a training_plan that raises counts as invalid."""

    def training_plan(self, context, text, seed):
        if text == "boom":
            raise RuntimeError("garbled")
        return TrainPlan(examples=[("", text)]) if "ok" in text else "no ok in it"


class _Scripted:
    def __init__(self, draws):
        self.draws, self.calls = draws, 0

    def sample_self_edits(self, contexts, k, cfg, seed):
        d = self.draws[min(self.calls, len(self.draws) - 1)]
        self.calls += 1
        return [[d[j % len(d)] for j in range(k)] for _ in contexts], 1.0, 7


def test_self_edit_is_valid_never_raises():
    assert self_edit_is_valid(_Domain(), None, "ok")
    assert not self_edit_is_valid(_Domain(), None, "nope")
    assert not self_edit_is_valid(_Domain(), None, "boom")


def test_sampling_helper_redraws_are_bounded_and_recorded(tmp_path):
    run = RunDir(tmp_path, {"x": 1})
    ex = _Scripted([["bad", "ok1"], ["bad", "bad"], ["ok2", "ok3"]])
    cfg = GenerationConfig(batch_size=8)
    sample_self_edit_units(ex, ["a", "b"], str, 2, cfg, run, "gen", seed=0, domain=_Domain(), redraws=1)
    assert ex.calls == 2  # first draw + one bounded redraw that found nothing valid
    assert run.get("gen/a")["self_edits"] == ["bad", "ok1"] and run.get("gen/a")["discarded"] == 0
    run2 = RunDir(tmp_path / "b", {"x": 1})
    ex2 = _Scripted([["bad", "ok1"], ["bad", "bad"], ["ok2", "ok3"]])
    sample_self_edit_units(ex2, ["a"], str, 2, cfg, run2, "gen", seed=0, domain=_Domain(), redraws=5)
    rec = run2.get("gen/a")
    assert rec["self_edits"] == ["ok2", "ok1"] and rec["discarded"] == 1 and ex2.calls == 3
    sample_self_edit_units(ex2, ["a"], str, 2, cfg, run2, "gen", seed=0, domain=_Domain(), redraws=5)
    assert ex2.calls == 3  # a finished unit is never resampled
    # Chunking: batch_size // k contexts per call, each unit records its context id.
    run3 = RunDir(tmp_path / "c", {"x": 1})
    ex3 = _Scripted([["ok"]])
    sample_self_edit_units(ex3, list("abcde"), str, 4, GenerationConfig(batch_size=8), run3, "g", seed=0)
    assert ex3.calls == 3 and run3.get("g/e")["context_id"] == "e"


def test_rundir_accepts_new_field_at_its_default(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Old:
        a: int = 1

    @dataclass
    class New:
        a: int = 1
        b: str = "x"

    RunDir(tmp_path, Old())
    RunDir(tmp_path, New())  # the stored config lacks b; b is at its default -> same run
    assert "b: x" in (tmp_path / "config.yaml").read_text()
    RunDir(tmp_path / "2", Old())
    with pytest.raises(ValueError, match="different config"):
        RunDir(tmp_path / "2", New(b="y"))  # a non-default value changes what the run means


def test_rundir_accepts_new_nested_field_at_its_default(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class InnerOld:
        x: int = 1

    @dataclass
    class InnerNew:
        x: int = 1
        backend: str = "hf"

    @dataclass
    class Old:
        gen: InnerOld = field(default_factory=InnerOld)

    @dataclass
    class New:
        gen: InnerNew = field(default_factory=InnerNew)

    RunDir(tmp_path, Old())
    RunDir(tmp_path, New())
    RunDir(tmp_path / "2", Old())
    with pytest.raises(ValueError, match="different config"):
        RunDir(tmp_path / "2", New(gen=InnerNew(backend="vllm")))
