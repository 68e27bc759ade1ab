"""Tests for seal_lm.knowledge.data: loaders for SEAL JSON/JSONL, SQuAD v1.1, hf:squad and the demo set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from seal_lm.knowledge.data import Passage, Question, load_passages, make_passage_id, save_passages

FIX = Path(__file__).parent / "fixtures" / "knowledge"


# --------------------------------------------------------------------------- formats


def test_seal_json() -> None:
    ps = load_passages(FIX / "tiny_squad.json")
    assert [p.title for p in ps] == ["Orvelle Clocktower", "Quillfish", "Festival of Reeds"]
    assert all(len(p.questions) == 2 for p in ps)
    assert ps[0].questions[0] == Question("Which mason finished the Orvelle Clocktower?", "Hild Ostrava")
    assert len(ps[0].completions) == 2 and len(ps[1].completions) == 1 and ps[2].completions == []
    assert all(isinstance(c, str) for p in ps for c in p.completions)


def test_seal_json_accepts_str_path() -> None:
    assert len(load_passages(str(FIX / "tiny_squad.json"))) == 3


def test_seal_jsonl_skips_blank_lines() -> None:
    ps = load_passages(FIX / "tiny_squad.jsonl")
    assert [p.title for p in ps] == ["Orvelle Clocktower", "Festival of Reeds"]
    assert ps[1].completions == ["Tolby hosts the Festival of Reeds every May."]
    assert ps[0].completions == []


def test_squad_v11_takes_first_answer() -> None:
    ps = load_passages(FIX / "tiny_squad_v11.json")
    assert len(ps) == 2
    assert {p.title for p in ps} == {"Kessmark Harbour"}
    assert [q.answer for q in ps[0].questions] == ["Ulla Renk", "620 metres"]
    assert [q.answer for q in ps[1].questions] == ["the Grey Widow", "1860"]
    assert ps[0].passage_id != ps[1].passage_id
    assert all(p.completions == [] for p in ps)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_save_load_roundtrip(tmp_path: Path, suffix: str) -> None:
    ps = load_passages(FIX / "tiny_squad.json")
    ps.append(Passage("Custom", "Some context.", [Question("q?", "a")], passage_id="custom-1"))
    out = tmp_path / "sub" / f"out{suffix}"
    save_passages(ps, out)
    assert load_passages(out) == ps
    if suffix == ".json":
        records = json.loads(out.read_text(encoding="utf-8"))
        assert set(records[0]) >= {"title", "context", "questions", "completions"}
        assert records[-1]["passage_id"] == "custom-1"


# --------------------------------------------------------------------------- passage ids, slicing


def test_passage_id_stable() -> None:
    ctx = "The Orvelle Clocktower stands in the market town of Brenmoor"
    expected = f"Orvelle#{hashlib.sha1(ctx.encode('utf-8')).hexdigest()[:10]}"
    assert make_passage_id("Orvelle", ctx) == expected
    assert Passage("Orvelle", ctx, []).passage_id == expected
    assert Passage("Orvelle", ctx, [], passage_id="given").passage_id == "given"
    a, b = load_passages(FIX / "tiny_squad.json"), load_passages(FIX / "tiny_squad.json")
    assert [p.passage_id for p in a] == [p.passage_id for p in b]
    assert len({p.passage_id for p in a}) == 3
    # the id depends only on the passage, not on its position in the slice
    assert load_passages(FIX / "tiny_squad.json", offset=2)[0].passage_id == a[2].passage_id


def test_limit_offset() -> None:
    full = load_passages("demo")
    assert load_passages("demo", limit=3) == full[:3]
    assert load_passages("demo", limit=3, offset=2) == full[2:5]
    assert load_passages("demo", offset=6) == full[6:]
    assert load_passages("demo", limit=0) == []
    assert load_passages("demo", limit=100, offset=7) == full[7:]
    assert load_passages("demo", offset=100) == []
    with pytest.raises(ValueError, match="offset"):
        load_passages("demo", offset=-1)
    with pytest.raises(ValueError, match="limit"):
        load_passages("demo", limit=-1)


# --------------------------------------------------------------------------- demo dataset


def test_demo_dataset_valid() -> None:
    ps = load_passages("demo")
    assert len(ps) == 8
    assert len({p.title for p in ps}) == 8 and len({p.passage_id for p in ps}) == 8
    for p in ps:
        assert 90 <= len(p.context.split()) <= 150, p.title
        assert 4 <= len(p.questions) <= 5, p.title
        assert len({q.question for q in p.questions}) == len(p.questions)
        for q in p.questions:
            assert q.answer in p.context, (p.title, q)
            assert 1 <= len(q.answer.split()) <= 4, (p.title, q)


# --------------------------------------------------------------------------- malformed input


def test_missing_field_names_file_record_field() -> None:
    with pytest.raises(ValueError) as ei:
        load_passages(FIX / "malformed_missing_field.json")
    msg = str(ei.value)
    assert "malformed_missing_field.json" in msg
    assert "record 1" in msg and "'Gorsk Mill'" in msg
    assert "'context'" in msg and "missing" in msg


def test_wrong_type_names_file_record_field() -> None:
    with pytest.raises(ValueError) as ei:
        load_passages(FIX / "malformed_wrong_type.json")
    msg = str(ei.value)
    assert "malformed_wrong_type.json: record 3 ('Foo'): field 'questions[1].answer' must be a non-empty string" in msg


def test_broken_json_names_file_line_col() -> None:
    with pytest.raises(ValueError) as ei:
        load_passages(FIX / "malformed_broken.json")
    msg = str(ei.value)
    assert "malformed_broken.json" in msg and "line 4" in msg and "column" in msg


def _write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


GOOD = {"title": "T", "context": "ctx", "questions": [{"question": "q?", "answer": "a"}]}


@pytest.mark.parametrize(
    "record, expected",
    [
        ("not a dict", "record 1: must be an object"),
        ({**GOOD, "title": 5}, "record 1: field 'title' must be a string"),
        ({**GOOD, "context": ""}, "record 1 ('T'): field 'context' must be a non-empty string"),
        ({**GOOD, "questions": "q"}, "record 1 ('T'): field 'questions' must be a list"),
        ({k: v for k, v in GOOD.items() if k != "questions"}, "record 1 ('T'): field 'questions' is missing"),
        ({**GOOD, "questions": ["q"]}, "record 1 ('T'): field 'questions[0]' must be an object"),
        ({**GOOD, "questions": [{"answer": "a"}]}, "record 1 ('T'): field 'questions[0].question' is missing"),
        ({**GOOD, "questions": [{"question": "q", "answer": "  "}]}, "record 1 ('T'): field 'questions[0].answer' must be a non-empty string"),
        ({**GOOD, "completions": [1]}, "record 1 ('T'): field 'completions' must be a list of strings"),
        ({**GOOD, "passage_id": 3}, "record 1 ('T'): field 'passage_id' must be a string"),
    ],
)
def test_malformed_seal_records(tmp_path: Path, record: object, expected: str) -> None:
    path = _write(tmp_path, "bad.json", [GOOD, record])
    with pytest.raises(ValueError) as ei:
        load_passages(path)
    assert f"bad.json: {expected}" in str(ei.value)


def test_malformed_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.jsonl", json.dumps(GOOD) + "\n\n" + '{"title": "x",\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: invalid JSON at line 3, column \d+"):
        load_passages(path)
    path = _write(tmp_path, "bad2.jsonl", json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "title": "Z", "context": 1}))
    with pytest.raises(ValueError, match=r"bad2\.jsonl: record 1 \('Z'\): field 'context'"):
        load_passages(path)


def test_malformed_squad_v11(tmp_path: Path) -> None:
    data = json.loads((FIX / "tiny_squad_v11.json").read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"] = []
    path = _write(tmp_path, "bad_v11.json", data)
    with pytest.raises(ValueError) as ei:
        load_passages(path)
    msg = str(ei.value)
    assert "bad_v11.json: record 0 ('Kessmark Harbour'): field 'paragraphs[1].qas[0].answers'" in msg
    del data["data"][0]["paragraphs"][0]["context"]
    with pytest.raises(ValueError, match=r"field 'paragraphs\[0\]\.context' is missing"):
        load_passages(_write(tmp_path, "bad_v11b.json", data))


def test_wrong_top_level_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"top\.json: expected a list"):
        load_passages(_write(tmp_path, "top.json", {"foo": 1}))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_passages(tmp_path / "nope.json")


# --------------------------------------------------------------------------- hf:squad (no network)


def test_hf_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def boom(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(RuntimeError) as ei:
        load_passages("hf:squad")
    msg = str(ei.value)
    assert "'squad'" in msg and "'validation'" in msg and "offline" in msg
    assert "network" in msg and "cache" in msg


def test_hf_groups_rows_by_context(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {
        "id": ["1", "2", "3", "4"],
        "title": ["A", "B", "A", "A"],
        "context": ["ctx a1", "ctx b", "ctx a1", "ctx a2"],
        "question": ["qa1?", "qb?", "qa1b?", "qa2?"],
        "answers": [
            {"text": ["x", "x y"], "answer_start": [0, 0]},
            {"text": ["b"], "answer_start": [4]},
            {"text": ["a1"], "answer_start": [4]},
            {"text": ["a2"], "answer_start": [4]},
        ],
    }
    calls: list[tuple[object, object]] = []

    def fake(name: str, split: str | None = None, **kwargs: object) -> object:
        calls.append((name, split))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ps = load_passages("hf:squad:train")
    assert calls == [("squad", "train")]
    assert [(p.title, p.context) for p in ps] == [("A", "ctx a1"), ("B", "ctx b"), ("A", "ctx a2")]
    assert ps[0].questions == [Question("qa1?", "x"), Question("qa1b?", "a1")]
    assert ps[0].passage_id == make_passage_id("A", "ctx a1")
    assert load_passages("hf:squad", limit=1, offset=1)[0].title == "B"
    assert calls[-1] == ("squad", "validation")
