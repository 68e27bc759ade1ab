"""Tests for seal_lm.knowledge.grading: local grader rules, grade_check, and the judge client
against a fake OpenAI-compatible server on 127.0.0.1 (no network, no shared data needed)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seal_lm.knowledge.grading import (
    GradeItem,
    LocalGrader,
    OpenAIJudge,
    _parse_yes_no,
    grade_answer,
    grade_check,
    make_grader,
)

SHARED_VERDICTS = Path(__file__).resolve().parents[1].parent / "shared/data/grading/gpt41_verdicts.json"


# ------------------------------------------------------------------------------------------
# Local grader rules
# ------------------------------------------------------------------------------------------

CASES = [
    # (question, gold, prediction, expected)
    ("To where did Ethelred flee?", "Normandy", "Ethelred fled to Normandy.", True),
    ("When is the oldest armed seal of Warsaw from?", "1390", "1396", False),
    ("Who was on the receiving end of the pass?", "Ted Ginn Jr.", "Cam Newton threw it to Greg Olsen.", False),
    # numbers: words <-> digits, thousands separators, ordinals, decades, centuries, ranges
    ("How many studies link violence and inequality?", "fifty", "There have been over 50 studies.", True),
    ("How concentrated do the ions get?", "up to a thousand times", "It can reach up to 1000 times higher.", True),
    ("How many students?", "14,000", "About 14000 students.", True),
    ("How many students?", "14,000", "1,400 (approximately 20%).", False),
    ("In what century were church schools established?", "nineteenth", "In the 19th century.", True),
    ("During what period did it re-open?", "late 1970s", "It re-opened in 1978.", True),
    ("During what period did it re-open?", "late 1970s", "It re-opened in 1988.", False),
    ("When was the Rhine within the Empire?", "10th century", "From 962 until 1806.", True),
    ("When did prices return?", "1973–1974", "1974", True),
    # dates: a different month is wrong; a bare year is enough for a "Month YYYY" gold
    ("When did he leave?", "June 30, 1951", "He left on September 30, 1951.", False),
    ("When did the campaign launch?", "September 2007", "2007", True),
    ("When did the campaign launch?", "September 2007", "1 October 2007", False),
    # refusals and non-answers
    ("Who directed Stormy Monday?", "Mike Figgis", "The director is not mentioned in the given text.", False),
    ("Who directed Stormy Monday?", "Mike Figgis", "I don't know, maybe Mike Figgis.", False),
    ("Who directed Stormy Monday?", "Mike Figgis", "", False),
    ("When was it finished?", "1534", "When was the New Testament translation finished?", False),
    # morphology, spelling variants, aliases, acronyms
    ("Where did Dinophysis get its chloroplasts?", "a cryptophyte", "It obtains them from cryptophytes.", True),
    ("Theories on imperialism use which country as a model?", "British", "Great Britain", True),
    ("Which word may have contributed to the name?", "tenggis", 'It derives from "Tengis".', True),
    ("In what country was the locomotive invented?", "United Kingdom", "It was built in Britain.", True),
    ("What position did he take?", "president and CEO", "President and Chief Executive Officer", True),
    ("Who was Genghis's 3rd son?", "Ögedei Khan", "Ogedei Khan", True),
    # short answers and surnames
    ("In the mid 18th century, who did not concur?", "Leonhard Euler", "Euler", True),
    ("What innovation is credited to him?", "traditional Mongolian script", "The Mongolian script", True),
    ("What innovation is credited to him?", "traditional Mongolian script", "Not the Mongolian script.", False),
    # multi-part golds need every part, in any order
    ("Who was charged with the task?", "Subutai and Jebe", "Subutai", False),
    ("Who was charged with the task?", "Subutai and Jebe", "Jebe and Subutai.", True),
    # yes/no and either-or questions, direction answers
    ("Are there other aviation communities?", "there are now numerous such communities", "Yes, several.", True),
    ("Is fertilization internal or external in most species?", "external", "It is external.", True),
    ("Is fertilization internal or external in most species?", "external", "Internal.", False),
    ("What does inequality do to growth in poor countries?", "reduce", "It can lead to lower growth.", True),
    ("What does inequality do to growth in poor countries?", "reduce", "It can increase growth.", False),
    # a number echoed from the question is not an answer
    ("How many LEA-funded 11 to 18 schools are there?", "eleven", "There are 22 LEA-funded 11 to 18 schools.", False),
    ("How many LEA-funded 11 to 18 schools are there?", "eleven", "There are 11 such 11 to 18 schools.", True),
    # list numbering is not content; generated follow-up prompts are cut off
    ("Which series were featured?", "the first two series", "1. An Unearthly Child 2. The Daleks", False),
    ("To where did Ethelred flee?", "Normandy", "Normandy\n\nQ: Passage: The 2018 Winter Olympics were held.", True),
    ("To where did Ethelred flee?", "Normandy", "Rouen\n\nQ: Passage: Normandy is a region of France.", False),
]


@pytest.mark.parametrize("question,gold,prediction,expected", CASES)
def test_local_rules(question: str, gold: str, prediction: str, expected: bool) -> None:
    assert grade_answer(question, gold, prediction) is expected


def test_local_grader_batch_is_deterministic_and_fast() -> None:
    items = [GradeItem(q, g, p) for q, g, p, _ in CASES] * 50
    grader = LocalGrader()
    assert grader.name == "local"
    start = time.perf_counter()
    first = grader.grade(items)
    assert time.perf_counter() - start < 5.0
    assert first == grader.grade(items)
    assert first[: len(CASES)] == [e for *_, e in CASES]
    assert all(isinstance(v, bool) for v in first)


def test_make_grader_local_by_default() -> None:
    assert isinstance(make_grader(), LocalGrader)


# ------------------------------------------------------------------------------------------
# grade_check
# ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, data: object, name: str = "verdicts.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_grade_check_counts(tmp_path: Path) -> None:
    records = [
        {"question": "Where?", "gold": "Normandy", "prediction": "In Normandy.", "judge_correct": True},  # tp
        {"question": "When?", "gold": "1390", "prediction": "1390", "judge_correct": False},  # fp
        {"question": "Who?", "gold": "Leonhard Euler", "prediction": "Gauss", "judge_correct": True},  # fn
        {"question": "When?", "gold": "1390", "prediction": "1396", "judge_correct": False},  # tn
        {"question": "When?", "gold": "1852", "prediction": "In 1852.", "judge_correct": True, "title": "V&A"},  # tp
    ]
    stats = grade_check(_write(tmp_path, records))
    assert (stats["tp"], stats["fp"], stats["fn"], stats["tn"]) == (2, 1, 1, 1)
    assert stats["n"] == 5
    assert stats["agreement"] == pytest.approx(3 / 5)
    assert stats["precision"] == pytest.approx(2 / 3)
    assert stats["recall"] == pytest.approx(2 / 3)


class _ConstGrader:
    name = "const"

    def __init__(self, verdicts: list[bool | None]) -> None:
        self.verdicts = verdicts

    def grade(self, items):  # noqa: ANN001 - test double
        return self.verdicts[: len(items)]


def test_grade_check_skips_ungraded_items(tmp_path: Path) -> None:
    records = [{"question": "q", "gold": "g", "prediction": "p", "judge_correct": j} for j in (True, False, True)]
    stats = grade_check(_write(tmp_path, records), grader=_ConstGrader([True, None, False]))
    assert stats["n"] == 2 and stats["skipped"] == 1
    assert (stats["tp"], stats["fp"], stats["fn"], stats["tn"]) == (1, 0, 1, 0)


_REC = {"question": "q", "gold": "g", "prediction": "p", "judge_correct": True}


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"question": "q"}, "JSON list"),
        ([_REC, {"question": "q", "gold": "g", "prediction": "p"}], "record 1: field 'judge_correct'"),
        ([{**_REC, "gold": 3}], "record 0: field 'gold'"),
        ([{**_REC, "judge_correct": "yes"}], "record 0: field 'judge_correct'"),
        (["not a record"], "record 0: expected an object"),
    ],
)
def test_grade_check_malformed(tmp_path: Path, data: object, fragment: str) -> None:
    path = _write(tmp_path, data, "bad.json")
    with pytest.raises(ValueError) as err:
        grade_check(path)
    assert "bad.json" in str(err.value) and fragment in str(err.value)


def test_grade_check_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        grade_check(path)


@pytest.mark.skipif(not SHARED_VERDICTS.exists(), reason="needs ../shared/data/grading/gpt41_verdicts.json")
def test_local_grader_agrees_with_gpt41() -> None:
    stats = grade_check(SHARED_VERDICTS)
    assert stats["n"] == 3111
    assert stats["agreement"] >= 0.90


# ------------------------------------------------------------------------------------------
# OpenAI-compatible judge against a fake server
# ------------------------------------------------------------------------------------------


class _FakeAPI:
    """A scripted /chat/completions server: each request pops the next (status, reply, delay_s)."""

    def __init__(self, script: list[tuple[int, str, float]], default: tuple[int, str, float] = (200, "yes", 0.0)):
        self.script = list(script)
        self.default = default
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.lock:
                    api.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    status, reply, delay = api.script.pop(0) if api.script else api.default
                time.sleep(delay)
                payload = (
                    {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                    if status == 200
                    else {"error": {"message": reply}}
                )
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # A short poll interval keeps shutdown() fast.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "_FakeAPI":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


ITEM = GradeItem("Where did Ethelred flee?", "Normandy", "He fled to Normandy.")


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SEAL_TEST_JUDGE_KEY", "sk-test")
    return "SEAL_TEST_JUDGE_KEY"


def _judge(url: str, key_env: str, **kw: object) -> OpenAIJudge:
    kw.setdefault("backoff_s", 0.0)
    return OpenAIJudge(url, api_key_env=key_env, **kw)  # type: ignore[arg-type]


def test_judge_sends_paper_prompt(api_key: str) -> None:
    with _FakeAPI([(200, "Yes", 0.0), (200, "no.", 0.0)]) as api:
        judge = _judge(api.url + "/", api_key)
        assert judge.name == "judge:gpt-4.1"
        assert judge.grade([ITEM]) == [True]
        assert judge.grade([GradeItem("Q?", "1390", "1396")]) == [False]
    req = api.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "gpt-4.1" and req["body"]["temperature"] == 0
    prompt = req["body"]["messages"][0]["content"]
    assert prompt.startswith("You are a grading assistant.")
    assert "Question: Where did Ethelred flee?\nGold answer: Normandy\nStudent answer: He fled to Normandy.\n" in prompt
    assert prompt.endswith("Respond 'yes' or 'no'.")


def test_judge_retries_server_error(api_key: str) -> None:
    with _FakeAPI([(500, "boom", 0.0), (429, "slow down", 0.0), (200, "yes", 0.0)]) as api:
        assert _judge(api.url, api_key).grade([ITEM]) == [True]
    assert len(api.requests) == 3


def test_judge_retries_unparseable_reply(api_key: str) -> None:
    with _FakeAPI([(200, "It depends.", 0.0), (200, "No", 0.0)]) as api:
        assert _judge(api.url, api_key).grade([ITEM]) == [False]
    assert len(api.requests) == 2


def test_judge_retries_timeout(api_key: str) -> None:
    with _FakeAPI([(200, "no", 1.0), (200, "yes", 0.0)]) as api:
        assert _judge(api.url, api_key, timeout_s=0.2).grade([ITEM]) == [True]
    assert len(api.requests) == 2


def test_judge_permanent_failure_is_none_and_not_cached(api_key: str, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    with _FakeAPI([], default=(503, "down", 0.0)) as api:
        assert _judge(api.url, api_key, max_retries=2, cache_path=cache).grade([ITEM]) == [None]
    assert len(api.requests) == 3
    assert not cache.exists() or cache.read_text() == ""


def test_judge_client_error_is_not_retried(api_key: str) -> None:
    with _FakeAPI([], default=(400, "bad request", 0.0)) as api:
        assert _judge(api.url, api_key).grade([ITEM]) == [None]
    assert len(api.requests) == 1


def test_judge_cache_prevents_second_request(api_key: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "judge.jsonl"
    items = [ITEM, GradeItem("Q?", "1390", "1396")]
    with _FakeAPI([(200, "yes", 0.0), (200, "yes", 0.0)]) as api:
        assert _judge(api.url, api_key, cache_path=cache, workers=1).grade(items) == [True, True]
        assert len(api.requests) == 2
        # A fresh judge (new process) reads the cache and sends nothing.
        assert _judge(api.url, api_key, cache_path=cache).grade(items) == [True, True]
        assert len(api.requests) == 2
    assert len(cache.read_text().splitlines()) == 2
    # Another model is another cache key.
    with _FakeAPI([(200, "no", 0.0), (200, "no", 0.0)]) as api:
        assert _judge(api.url, api_key, cache_path=cache, model="other").grade(items) == [False, False]
        assert len(api.requests) == 2


def test_judge_cache_survives_torn_line(api_key: str, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    cache.write_text('{"key": "abc", "verd', encoding="utf-8")  # interrupted write
    with _FakeAPI([(200, "no", 0.0)]) as api:
        assert _judge(api.url, api_key, cache_path=cache).grade([ITEM]) == [False]
        assert _judge(api.url, api_key, cache_path=cache).grade([ITEM]) == [False]
        assert len(api.requests) == 1


def test_judge_concurrent_batch(api_key: str) -> None:
    items = [GradeItem(f"Q{i}?", "g", "p") for i in range(20)]
    with _FakeAPI([], default=(200, "yes", 0.01)) as api:
        assert _judge(api.url, api_key, workers=4).grade(items) == [True] * 20
    assert len(api.requests) == 20


def test_judge_requires_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEAL_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="SEAL_TEST_MISSING_KEY"):
        OpenAIJudge("http://127.0.0.1:9/v1", api_key_env="SEAL_TEST_MISSING_KEY")


def test_make_grader_judge(api_key: str, tmp_path: Path) -> None:
    grader = make_grader(
        "http://127.0.0.1:9/v1", judge_model="gpt-4.1-mini", api_key_env=api_key, cache_path=tmp_path / "c.jsonl"
    )
    assert isinstance(grader, OpenAIJudge) and grader.name == "judge:gpt-4.1-mini"


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("yes", True),
        ("No.", False),
        ("'yes'", True),
        ("Yes, it is correct.", True),
        ("The answer is no", False),
        ("Either yes or no.", None),
        ("maybe", None),
        ("", None),
    ],
)
def test_parse_yes_no(reply: str, expected: bool | None) -> None:
    assert _parse_yes_no(reply) is expected
