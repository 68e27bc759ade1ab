"""Knowledge-incorporation data: passages with questions, loaded from several formats.

Supported sources for :func:`load_passages`:

* a SEAL JSON file: ``[{title, context, questions: [{question, answer}], completions?: [str]}]``;
* a ``.jsonl`` file with one SEAL record per line;
* an official SQuAD v1.1 JSON file: ``{"version", "data": [{title, paragraphs: [{context, qas}]}]}``;
* ``hf:<dataset>[:split]`` (e.g. ``hf:squad`` or ``hf:squad:train``; default split ``validation``),
  loaded with Hugging Face ``datasets`` and grouped by context;
* ``demo``: the small packaged set of fictional passages used by ``seal demo``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Question", "Passage", "load_passages", "save_passages", "DEMO_SOURCE"]

DEMO_SOURCE = "demo"
_DEMO_FILE = "demo_passages.json"


@dataclass(frozen=True)
class Question:
    """A question about a passage with its gold answer (the first one if several exist)."""

    question: str
    answer: str


@dataclass
class Passage:
    """A passage to be absorbed, its evaluation questions and optional external self-edits."""

    title: str
    context: str
    questions: list[Question]
    completions: list[str] = field(default_factory=list)
    passage_id: str = ""

    def __post_init__(self) -> None:
        if not self.passage_id:
            self.passage_id = make_passage_id(self.title, self.context)

    def to_dict(self) -> dict[str, Any]:
        """Return the SEAL JSON record for this passage."""
        return {
            "passage_id": self.passage_id,
            "title": self.title,
            "context": self.context,
            "questions": [{"question": q.question, "answer": q.answer} for q in self.questions],
            "completions": list(self.completions),
        }


def make_passage_id(title: str, context: str) -> str:
    """Stable id ``"{title}#{sha1(context)[:10]}"``."""
    return f"{title}#{hashlib.sha1(context.encode('utf-8')).hexdigest()[:10]}"


def load_passages(source: str | Path, limit: int | None = None, offset: int = 0) -> list[Passage]:
    """Load passages from ``source`` and return the slice ``[offset : offset + limit]``.

    ``source`` is a SEAL ``.json``/``.jsonl`` file, an official SQuAD v1.1 JSON file,
    ``"hf:<dataset>[:split]"`` or ``"demo"``. Malformed input raises ``ValueError`` naming
    the file, the record index (and title) and the offending field.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if isinstance(source, str) and source == DEMO_SOURCE:
        text = resources.files(__package__).joinpath(_DEMO_FILE).read_text(encoding="utf-8")
        passages = _parse_json_text(text, _DEMO_FILE)
    elif isinstance(source, str) and source.startswith("hf:"):
        passages = _load_hf(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"passage file not found: {path}")
        text = path.read_text(encoding="utf-8")
        passages = _parse_jsonl_text(text, str(path)) if path.suffix == ".jsonl" else _parse_json_text(text, str(path))
    end = None if limit is None else offset + limit
    return passages[offset:end]


def save_passages(passages: list[Passage], path: str | Path) -> None:
    """Write ``passages`` as SEAL JSON (or JSON Lines if ``path`` ends in ``.jsonl``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [p.to_dict() for p in passages]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- parsing


def _parse_json_text(text: str, name: str) -> list[Passage]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, list):
        return [_seal_record(r, name, i) for i, r in enumerate(data)]
    if isinstance(data, dict) and "data" in data:
        return _squad_v11(data, name)
    raise ValueError(f"{name}: expected a list of SEAL records or a SQuAD v1.1 object with a 'data' key")


def _parse_jsonl_text(text: str, name: str) -> list[Passage]:
    passages = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: invalid JSON at line {lineno}, column {e.colno}: {e.msg}") from None
        passages.append(_seal_record(record, name, len(passages)))
    return passages


def _where(name: str, index: int, title: Any) -> str:
    return f"{name}: record {index}" + (f" ({title!r})" if isinstance(title, str) and title else "")


def _str_field(record: dict[str, Any], key: str, where: str, field_name: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        kind = "a string" if allow_empty else "a non-empty string"
        problem = "is missing" if key not in record else f"must be {kind}"
        raise ValueError(f"{where}: field {field_name!r} {problem}" + ("" if key not in record else f" (got {value!r})"))
    return value


def _seal_record(record: Any, name: str, index: int) -> Passage:
    if not isinstance(record, dict):
        raise ValueError(f"{name}: record {index}: must be an object, got {type(record).__name__}")
    where = _where(name, index, record.get("title"))
    title = _str_field(record, "title", where, "title", allow_empty=True)
    context = _str_field(record, "context", where, "context")
    qs = record.get("questions")
    if not isinstance(qs, list):
        raise ValueError(f"{where}: field 'questions' " + ("is missing" if "questions" not in record else "must be a list"))
    questions = []
    for j, q in enumerate(qs):
        fq = f"questions[{j}]"
        if not isinstance(q, dict):
            raise ValueError(f"{where}: field {fq!r} must be an object with 'question' and 'answer'")
        question = _str_field(q, "question", where, f"{fq}.question")
        if "answer" not in q and isinstance(q.get("answers"), list):  # tolerate a list of answers
            answer = _first_answer(q["answers"], where, f"{fq}.answers")
        else:
            answer = _str_field(q, "answer", where, f"{fq}.answer")
        questions.append(Question(question, answer))
    completions = record.get("completions", [])
    if isinstance(completions, str):
        completions = [completions]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise ValueError(f"{where}: field 'completions' must be a list of strings")
    pid = record.get("passage_id", "")
    if not isinstance(pid, str):
        raise ValueError(f"{where}: field 'passage_id' must be a string")
    return Passage(title, context, questions, list(completions), pid)


def _first_answer(answers: list[Any], where: str, field_name: str) -> str:
    """First non-empty answer text from a list of strings or ``{"text": ...}`` objects."""
    for a in answers:
        text = a.get("text") if isinstance(a, dict) else a
        if isinstance(text, str) and text.strip():
            return text
    raise ValueError(f"{where}: field {field_name!r} must contain at least one non-empty answer text")


def _squad_v11(data: dict[str, Any], name: str) -> list[Passage]:
    articles = data["data"]
    if not isinstance(articles, list):
        raise ValueError(f"{name}: field 'data' must be a list")
    passages = []
    for i, art in enumerate(articles):
        if not isinstance(art, dict):
            raise ValueError(f"{name}: record {i}: must be an object, got {type(art).__name__}")
        where = _where(name, i, art.get("title"))
        title = _str_field(art, "title", where, "title", allow_empty=True)
        paragraphs = art.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise ValueError(f"{where}: field 'paragraphs' must be a list")
        for p, para in enumerate(paragraphs):
            fp = f"paragraphs[{p}]"
            if not isinstance(para, dict):
                raise ValueError(f"{where}: field {fp!r} must be an object")
            context = _str_field(para, "context", where, f"{fp}.context")
            qas = para.get("qas")
            if not isinstance(qas, list):
                raise ValueError(f"{where}: field '{fp}.qas' must be a list")
            questions = []
            for k, qa in enumerate(qas):
                fq = f"{fp}.qas[{k}]"
                if not isinstance(qa, dict):
                    raise ValueError(f"{where}: field {fq!r} must be an object")
                question = _str_field(qa, "question", where, f"{fq}.question")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise ValueError(f"{where}: field '{fq}.answers' must be a list")
                questions.append(Question(question, _first_answer(answers, where, f"{fq}.answers")))
            passages.append(Passage(title, context, questions))
    return passages


def _load_hf(source: str) -> list[Passage]:
    """``hf:<dataset>[:split]`` via Hugging Face ``datasets``, rows grouped by (title, context)."""
    _, _, rest = source.partition(":")
    dataset_name, _, split = rest.partition(":")
    dataset_name, split = dataset_name or "squad", split or "validation"
    try:
        import datasets

        rows = datasets.load_dataset(dataset_name, split=split)
    except Exception as e:  # ImportError, network or cache failures, unknown split ...
        raise RuntimeError(
            f"could not load Hugging Face dataset {dataset_name!r} (split {split!r}) for source {source!r}: {e}. "
            "This needs the 'datasets' package (pip install 'seal-lm[datasets]') and either network access "
            "or a local Hugging Face cache with the dataset; alternatively pass a local SEAL or SQuAD v1.1 JSON file."
        ) from e
    groups: dict[tuple[str, str], Passage] = {}
    for i, row in enumerate(rows):
        where = _where(source, i, row.get("title"))
        key = (row.get("title") or "", row["context"])
        answers = row.get("answers") or {}
        texts = answers.get("text", []) if isinstance(answers, dict) else answers
        q = Question(_str_field(row, "question", where, "question"), _first_answer(list(texts), where, "answers.text"))
        if key not in groups:
            groups[key] = Passage(key[0], key[1], [])
        groups[key].questions.append(q)
    return list(groups.values())
