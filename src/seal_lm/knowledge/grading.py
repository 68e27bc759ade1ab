"""Grading free-text answers to SQuAD questions (SEAL knowledge incorporation).

SEAL asks the adapted model each question without its passage and had GPT-4.1 decide whether the
free-text answer matches the gold answer. This module provides two graders with one interface,
``grade(items) -> list[bool | None]``:

* :class:`LocalGrader` -- deterministic, offline, stdlib only. It agrees with the paper's GPT-4.1
  verdicts on about 90% of the released graded answers (see :func:`grade_check`).
* :class:`OpenAIJudge` -- the paper's GPT-4.1 grading prompt sent to any OpenAI-compatible
  ``/chat/completions`` endpoint, with retries and an on-disk cache. ``None`` means the judge could
  not be reached or gave no usable reply; callers must not score it as wrong.

:func:`grade_check` measures a grader's agreement with stored judge verdicts.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, Sequence

__all__ = [
    "GRADE_PROMPT",
    "GradeItem",
    "Grader",
    "LocalGrader",
    "OpenAIJudge",
    "grade_answer",
    "grade_check",
    "make_grader",
]

log = logging.getLogger(__name__)

# The SEAL paper's grading prompt (knowledge-incorporation/src/utils.py, SQUAD_GRADE_TEMPLATE).
GRADE_PROMPT = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly "
    "answers the question based solely on the provided gold answer. Do not use any outside knowledge. "
    "The student answer can include additional information, but it must at least fully convey the "
    "gold answer and must not contradict it. Ignore style, phrasing, or extra details that do not "
    "affect correctness. Respond ONLY with 'yes' or 'no'.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {pred}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'."
)


@dataclass(frozen=True)
class GradeItem:
    """One answer to grade."""

    question: str
    gold: str
    prediction: str


class Grader(Protocol):
    """Anything with a name and ``grade(items) -> list[bool | None]``."""

    name: str

    def grade(self, items: Sequence[GradeItem]) -> list[bool | None]: ...


# --------------------------------------------------------------------------------------------
# Local grader: text normalisation
# --------------------------------------------------------------------------------------------

_STOP_WORDS = set(
    """a an the of in on at to for from by with and or as is was were are be been being it its this
    that these those which who whom whose what when where why how than then there their they them he
    she his her him we our you your i my me do does did has have had not no but so such into about
    over under after before during up down out off very also can could would should may might will
    shall s late early mid approximately around nearly almost roughly least circa some only just""".split()
)
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
# "one" stays a word: it is far more often a pronoun ("one of the most common") than a count.
_NUM_WORDS = {w: i for i, w in enumerate(_UNITS) if w != "one"}
_NUM_WORDS.update(
    {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
)
_ORDINALS = {
    w: i + 1
    for i, w in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
        "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split()
    )
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# Derivational endings that keep the meaning of a shared stem ("Britain"/"British", "Turkey"/"Turkish").
_DERIV_SUFFIXES = {
    "", "ish", "ain", "ese", "y", "ey", "ian", "an", "ia", "ic", "ical", "al", "ary", "ly", "ity",
    "ness", "ment", "ion", "ation", "ist", "ism", "ive",
}
_TRANSLIT = str.maketrans(
    {"æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe", "ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L", "đ": "d",
     "ı": "i"}
)
# Common aliases mapped to one spelling before tokenising.
_ALIASES = [
    (re.compile(r"\b(united kingdom|great britain|u\.k\.|uk)\b", re.I), "britain"),
    (re.compile(r"\b(united states of america|united states|u\.s\.a\.|u\.s\.|usa)\b", re.I), "america"),
    (re.compile(r"\b(the netherlands|netherlands|holland)\b", re.I), "dutch"),
    (re.compile(r"\bhalf\b", re.I), "50%"),
]
_NUMBER = re.compile(r"\d+(\.\d+)?")
_DECADE = re.compile(r"\d*0s")


def _stem(word: str) -> str:
    """Light suffix stripping: plurals, -ing/-ed, final -e (applied identically to both sides)."""
    if not word.isalpha():
        return word
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


_STOP = _STOP_WORDS | {_stem(w) for w in _STOP_WORDS}
_MONTHS = "january february march april may june july august september october november december".split()
_MONTH_STEMS = {_stem(m) for m in _MONTHS}
_DOWN = {
    _stem(w)
    for w in (
        "reduce reduced reduces reducing decrease decreased decline declined shrink shrank shrunk fall fell "
        "drop dropped diminish diminished hinder hindered cut slow slower negative negatively worse weaken "
        "lessen hamper harm impede reduction lose lost loss lower smaller fewer"
    ).split()
}
_UP = {
    _stem(w)
    for w in (
        "increase increased increases rise rose risen grow grew encourage encouraged boost improve improved "
        "positive positively expand expanded better strengthen promote greater larger higher raise raised more"
    ).split()
}
_ORG_WORDS = {
    "organization", "organisation", "church", "party", "council", "university", "company", "institute",
    "museum", "society", "association", "union", "committee", "commission", "court", "programm", "agency",
}


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else "%.6g" % value


@lru_cache(maxsize=65536)
def _tokens(text: str) -> tuple[str, ...]:
    """Normalised tokens: ASCII-folded, lowercase, no punctuation/articles, numbers as digits, stemmed."""
    s = text.translate(_TRANSLIT)
    s = re.sub(r"(?<=\w )[A-Z]\.\s", "", s)  # middle initials: "Arthur H. Compton" -> "Arthur Compton"
    for rx, rep in _ALIASES:
        s = rx.sub(rep, s)
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).lower()
    s = re.sub(r"(?<=\d),(?=\d{3})", "", s)  # 1,000 -> 1000
    s = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", s)  # 19th -> 19
    s = s.replace("%", " percent ")
    s = re.sub(r"[\u2010-\u2015\-/+]", " ", s)
    s = re.sub(r"'s\b|\u2019s\b", "", s)
    s = "".join(c if (c.isalnum() or c.isspace() or c == ".") else " " for c in s)
    s = re.sub(r"\.(?!\d)", " ", s)
    words = [w for w in s.split() if w not in ("a", "an", "the")]
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _ORDINALS:
            out.append(str(_ORDINALS[w]))
            i += 1
            continue
        value = None
        if _NUMBER.fullmatch(w):
            value, j = float(w), i + 1
        elif w in _NUM_WORDS:
            value, j = float(_NUM_WORDS[w]), i + 1
        elif w in _SCALES:  # a bare "thousand" (its article was dropped above)
            value, j = 1.0, i
        if value is not None:
            while j < len(words) and words[j] in _SCALES:
                value *= _SCALES[words[j]]
                j += 1
            out.append(_fmt_number(value))
            i = j
            continue
        out.append(w)
        i += 1
    return tuple(_stem(w) for w in out)


def _is_num(tok: str) -> bool:
    return bool(_NUMBER.fullmatch(tok))


def _is_decade(tok: str) -> bool:
    return bool(_DECADE.fullmatch(tok))


@lru_cache(maxsize=1 << 18)
def _tok_match(g: str, p: str) -> bool:
    """Whether prediction token ``p`` expresses gold token ``g``."""
    if g == p:
        return True
    if _is_decade(g):  # "1970s" matches 1970..1979
        return p[:-1] == g[:-2] if _is_num(p) and len(p) == len(g) - 1 else p == g[:-1]
    if _is_num(g) or _is_num(p):  # numbers must match exactly (1390 vs 1396 is wrong)
        return False
    short, long_ = (g, p) if len(g) <= len(p) else (p, g)
    if len(short) >= 5 and long_.startswith(short):  # "revolution"/"revolutionary", "japan"/"japanese"
        return True
    k = 0
    while k < len(short) and short[k] == long_[k]:
        k += 1
    if k >= 4 and short[k:] in _DERIV_SUFFIXES and long_[k:] in _DERIV_SUFFIXES:
        return True
    if len(short) >= 5 and short[0] == long_[0] and len(long_) - len(short) <= 2:  # spelling variants
        return difflib.SequenceMatcher(None, short, long_).ratio() >= 0.8
    return False


def _present(tok: str, pred_set: set[str] | frozenset[str]) -> bool:
    return tok in pred_set or any(_tok_match(tok, p) for p in pred_set)


def _acronyms(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\b[A-Z][A-Z0-9]{1,6}\b", text)}


def _initialisms(words: Sequence[str]) -> set[str]:
    """Initials of every run of 2..6 consecutive content words ("chief executive officer" -> "ceo")."""
    ws = [w for w in words if w not in _STOP and w.isalpha()]
    return {"".join(w[0] for w in ws[i : i + n]) for i in range(len(ws)) for n in range(2, 7) if i + n <= len(ws)}


# --------------------------------------------------------------------------------------------
# Local grader: decision rules
# --------------------------------------------------------------------------------------------

# Models often keep generating a new prompt after their answer ("Q: Passage: ...").
_JUNK = re.compile(r"(\n|\s{2,})\s*(Q|Question|Passage|Topic|Context|Given the background|You are an? )\s*[:A-Z]")
_LIST_MARK = re.compile(r"(^|\n|\s)(\d{1,2}[.)]|[-*\u2022])\s+")
_NEG_OR_CONTRAST = re.compile(r"\b(not|no|never|neither|nor|but|however|although|though|instead|rather)\b|n't\b", re.I)
_REFUSAL = re.compile(
    r"\b(i don'?t know|i do not know|i'?m not sure|i am not sure"
    r"|(is|are|was|were) not (mentioned|specified|provided|stated|given|available)"
    r"|no (specific )?(information|mention)|(does|do|did) not (say|mention|specify|provide|state)"
    r"|not enough information|cannot (be )?determined?|unable to (determine|answer)|cannot answer)\b",
    re.I,
)
_YES_NO_QUESTION = re.compile(r"^\s*(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should)\b", re.I)
_MONTH_YEAR = re.compile(r"^\s*(?:in\s+)?(%s)\s+(\d{4})\s*$" % "|".join(_MONTHS), re.I)
_CENTURY = re.compile(r"(\d{1,2})(?:st|nd|rd|th)\s+century", re.I)
_YEAR_RANGE = re.compile(r"(\d{4})\s*[\u2010-\u2015-]\s*(\d{2}|\d{4})(?:\s+season)?", re.I)
_RECALL_THRESHOLD = 0.6  # share of gold content words needed when the gold has 3+ of them


def _split_junk(raw: str) -> tuple[str, str]:
    """(answer, trailing generated junk)."""
    m = _JUNK.search(raw)
    return (raw[: m.start()].strip(), raw[m.start() :].strip()) if m else (raw, "")


def _match(question: str, gold: str, pred: str, full_gold: str) -> str | None:
    """Match one gold variant: "exact" (contiguous), "partial" (rule-based) or None."""
    gt, pt, qt = _tokens(gold), _tokens(pred), set(_tokens(question))
    if not gt:
        return None
    ps = set(pt)
    # Gold words the question already contains carry no information about the answer.
    content = [t for t in gt if t not in _STOP and t not in qt] or [t for t in gt if t not in _STOP] or list(gt)
    numbers = [t for t in gt if _is_num(t) or _is_decade(t)]
    if numbers and not all(_present(t, ps) for t in numbers):
        return None
    if numbers and all(_is_num(t) or _is_decade(t) for t in content):
        q_all = _tokens(question)
        for t in numbers:  # a number echoed from the question only counts if repeated beyond the echo
            if t in q_all and pt.count(t) <= q_all.count(t):
                return None
    gold_months = {t for t in gt if t in _MONTH_STEMS}
    pred_months = {t for t in ps if t in _MONTH_STEMS}
    if gold_months and pred_months and not gold_months & pred_months:
        return None
    # Acronym on one side, spelled out on the other ("CEO" / "chief executive officer").
    hits = _acronyms(pred) & _initialisms(gt)
    if hits or _acronyms(gold) & _initialisms(pt):
        ps |= hits | (_acronyms(gold) & _initialisms(pt))
        ws = [t for t in gt if t not in _STOP and t.isalpha()]
        for a in hits:
            for i in range(len(ws)):
                if "".join(w[0] for w in ws[i : i + len(a)]) == a:
                    ps |= set(ws[i : i + len(a)])
    contained = f" {' '.join(gt)} " in f" {' '.join(pt)} "
    if contained:
        return "exact"
    recall = sum(_present(t, ps) for t in content) / len(content)
    # Multi-part golds ("X, Y and Z"): every part must show up.
    conj = re.search(r"\band\b|&|\bas well as\b", full_gold)
    parts = [a for a in re.split(r",|\band\b|&|\bas well as\b" if conj else r"&", full_gold) if a.strip()]
    if recall < 0.99 and len(parts) >= 2 and all(len(a.split()) <= 4 for a in parts):
        for a in parts:
            at = [t for t in _tokens(a) if t not in _STOP] or list(_tokens(a))
            if at and not any(_present(t, ps) for t in at):
                return None
    if recall >= 0.99 or (recall >= _RECALL_THRESHOLD and len(content) >= 3):
        return "partial"
    # Direction answers ("reduce", "encourage"): same direction, no opposite one.
    core = [t for t in content if t not in {"began", "begin", "start", "to"}]
    for same, opposite in ((_DOWN, _UP), (_UP, _DOWN)):
        if core and all(t in same for t in core):
            words = {t for t in ps if t not in qt}
            if words & same and not words & opposite:
                return "partial"
    # A short answer made only of gold words ("Euler" for "Leonhard Euler", "P" for "complexity class P").
    if recall > 0 and not re.search(r",|\band\b|&", full_gold):
        own = [t for t in dict.fromkeys(pt) if t not in _STOP and t not in qt]
        missing = [t for t in content if not _present(t, ps)]
        date_like = any(_is_num(t) or t in _MONTH_STEMS for t in missing) or any(t in _MONTH_STEMS for t in gt)
        only_numbers = all(_is_num(t) for t in own)
        gset = set(gt)
        if (
            1 <= len(own) <= 3
            and not (only_numbers and (date_like or len(missing) > 1))
            and all(_present(t, gset) for t in own)
        ):
            return "partial"
    # People named by surname in answers to who-questions ("Abercrombie" for "Major General James Abercrombie").
    if re.search(r"\b(who|whom|whose)\b", question, re.I):
        names = [a.split() for a in re.split(r",|\band\b|&", full_gold) if a.strip()]
        ok = bool(names)
        for words in names:
            last = _tokens(words[-1]) if words else ()
            ok = ok and (
                2 <= len(words) <= 5
                and all(w[0].isupper() for w in words)
                and bool(last)
                and last[-1] not in _ORG_WORDS
                and not _is_num(last[-1])
                and last[-1] in ps
                and last[-1] not in qt
            )
        if ok:
            return "partial"
    return None


def _judge_like(question: str, gold: str, pred: str) -> str | None:
    """Verdict for a cleaned prediction: "exact", "partial" or None (wrong)."""
    if _YES_NO_QUESTION.match(question):
        gold_negative = bool(re.match(r"\s*(no|not)\b", gold, re.I))
        if re.match(r"\s*yes\b", pred, re.I) and not gold_negative:
            return "partial"
        if re.match(r"\s*no\b", pred, re.I) and gold_negative:
            return "partial"
    # Either-or questions ("internal or external?"): the chosen option decides.
    m = re.search(r"\b([\w-]+) or ([\w-]+)\b", question)
    if m:
        a, b = (_tokens(m.group(1)) or ("",))[-1], (_tokens(m.group(2)) or ("",))[0]
        gts, pts = set(_tokens(gold)), list(_tokens(pred))
        picked = [o for o in (a, b) if o and o in gts]
        if len(picked) == 1:
            other = b if picked[0] == a else a
            if picked[0] in pts and (other not in pts or pts.index(picked[0]) < pts.index(other)):
                return "partial"
            if other in pts and picked[0] not in pts:
                return None
    # "September 2007": the year alone is enough unless another month is named.
    m = _MONTH_YEAR.match(gold)
    if m:
        other_month = any(mo != m.group(1).lower() and re.search(rf"\b{mo}\b", pred.lower()) for mo in _MONTHS)
        if re.search(rf"\b{m.group(2)}\b", pred) and not other_month:
            return "partial"
    variants = [gold]
    if " (" in gold:  # "Terra preta (black earth)": either part
        inner = re.findall(r"\s\(([^)]*)\)", gold)
        outer = re.sub(r"\s\([^)]*\)", " ", gold)
        variants += [v for v in [outer, *inner] if len(v.strip()) >= 3]
    if re.search(r"\bor\b", gold) and "/or" not in gold:  # "a frontier market or an emerging market"
        variants += [v for v in re.split(r",?\s*\bor\b\s*", gold) if v.strip()]
    results = [_match(question, v, pred, gold) for v in variants if v.strip()]
    return "exact" if "exact" in results else ("partial" if "partial" in results else None)


def _year_span(gold: str) -> tuple[int, int] | None:
    """(first, last) year of a gold that is just a century ("10th century") or a year range ("1963-64 season")."""
    g = re.sub(r"^\s*(in\s+)?(the\s+)?", "", gold.strip().rstrip("."))
    m = _CENTURY.fullmatch(g)
    if m:
        return (int(m.group(1)) - 1) * 100, int(m.group(1)) * 100 - 1
    m = _YEAR_RANGE.fullmatch(g)
    if m:
        start, end = m.group(1), m.group(2)
        return int(start), int(start[: 4 - len(end)] + end)
    return None


def grade_answer(question: str, gold: str, prediction: str) -> bool:
    """Deterministic local verdict for one answer (see :class:`LocalGrader` for the rules)."""
    raw = prediction.strip()
    answer, junk = _split_junk(raw)
    if not answer:
        return False
    if _REFUSAL.search(answer) or (answer.endswith("?") and len(re.findall(r"[.!?]", answer)) == 1):
        return False
    span = _year_span(gold)
    verdict: str | None = None
    if span:  # "10th century" vs "from 962", "1973-1974" vs "1974": a year inside the span
        years = [int(y) for y in re.findall(r"\b(\d{3,4})\b", answer)]
        verdict = "partial" if years and span[0] <= years[0] <= span[1] else None
    if verdict is None:
        cleaned = _LIST_MARK.sub(" ", answer).strip()
        if not cleaned:
            return False
        verdict = _judge_like(question, gold, cleaned)
    if verdict == "partial":
        # Partial evidence is overturned by negation/contrast, or by generated follow-up questions
        # (a leaked "You are an AI assistant..." system prompt is harmless).
        if _NEG_OR_CONTRAST.search(answer) or (junk and not junk.startswith("You are")):
            return False
    return verdict is not None


class LocalGrader:
    """Deterministic offline grader. name = "local".

    Text on both sides is normalised (ASCII folding, lowercase, punctuation and articles dropped,
    "1,000"/"one thousand" -> 1000, "19th"/"nineteenth" -> 19, "UK"/"Britain" aliases, light
    stemming). Gold "content words" are its non-stop words that the question does not already
    contain. The prediction's trailing generated junk ("Q: Passage: ...") and list markers are cut.

    Wrong: empty answers, refusals ("not mentioned in the text", "I don't know"), a bare question,
    any missing gold number (numbers match exactly; "1970s" covers 1970-79), a different month
    than the gold date, a gold number only echoed from the question, a multi-part gold
    ("X, Y and Z") with a part entirely missing.

    Right: the gold phrase appears contiguously ("exact"), or else ("partial"): all gold content
    words appear (tokens also match across plurals/derivations "Britain"/"British", spelling
    variants "Tengis"/"Tenggis", acronyms "CEO"/"chief executive officer"); >= 60% of them when
    the gold has 3+; a short answer made only of gold words ("Euler"); a surname for who-questions;
    a same-direction word for direction golds ("hinder" for "reduce"); "yes" to a yes/no question
    with an affirmative gold; the gold's option in an either-or question; the year for a
    "Month YYYY" gold; a year inside a "Nth century" or "1973-74" gold; either half of "A (B)"
    or "A or B".
    Partial matches are overturned by negation/contrast words or generated follow-up prompts.
    """

    name: str = "local"

    def grade(self, items: Sequence[GradeItem]) -> list[bool | None]:
        return [grade_answer(it.question, it.gold, it.prediction) for it in items]


# --------------------------------------------------------------------------------------------
# GPT-4.1 judge through an OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------------


def _parse_yes_no(text: str) -> bool | None:
    """'yes'/'no' verdict from a judge reply, or None if it is neither."""
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return words[0] == "yes"
    has_yes, has_no = "yes" in words, "no" in words
    return has_yes if has_yes != has_no else None


class _Retryable(Exception):
    """A failure worth retrying (rate limit, server error, timeout, unusable reply)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIJudge:
    """Paper's GPT-4.1 grading prompt via an OpenAI-compatible /chat/completions endpoint.

    ``url`` is the API base (e.g. ``https://api.openai.com/v1``). Requests use temperature 0.
    HTTP 408/429/5xx, timeouts, connection errors and replies that are neither yes nor no are
    retried up to ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, or the
    server's ``Retry-After`` if longer); other HTTP errors fail at once. An item that still fails
    is graded ``None``. ``workers`` requests run concurrently.
    With ``cache_path``, verdicts are appended to a JSONL file keyed by
    sha256(model, question, gold, prediction); cached items are never sent again and failures
    are not cached.
    """

    def __init__(
        self,
        url: str,
        model: str = "gpt-4.1",
        api_key_env: str = "OPENAI_API_KEY",
        cache_path: str | Path | None = None,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        workers: int = 8,
    ) -> None:
        key = os.environ.get(api_key_env)
        if not key:
            raise ValueError(f"OpenAIJudge: environment variable {api_key_env} is not set (it must hold the API key)")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"judge:{model}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.workers = max(1, workers)
        self._key = key
        self._lock = threading.Lock()
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, bool] = {}
        self._torn_tail = False  # the cache file does not end with a newline (interrupted write)
        if self.cache_path is not None and self.cache_path.exists():
            text = self.cache_path.read_text(encoding="utf-8")
            self._torn_tail = bool(text) and not text.endswith("\n")
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self._cache[rec["key"]] = bool(rec["verdict"])
                except (ValueError, KeyError, TypeError):
                    # A torn last line from an interrupted run is dropped, not fatal.
                    log.warning("%s:%d: unreadable judge-cache line skipped", self.cache_path, n)

    def _key_of(self, item: GradeItem) -> str:
        blob = json.dumps([self.model, item.question, item.gold, item.prediction], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _request(self, item: GradeItem) -> bool:
        prompt = GRADE_PROMPT.format(question=item.question, gold=item.gold, pred=item.prediction.strip())
        body = json.dumps(
            {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        ).encode("utf-8")
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            if e.code in (408, 429) or e.code >= 500:
                try:
                    retry_after = float(e.headers.get("Retry-After", 0)) if e.headers else 0.0
                except ValueError:  # an HTTP-date; plain backoff is fine
                    retry_after = 0.0
                raise _Retryable(f"HTTP {e.code}", retry_after) from e
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            # Connection errors, timeouts, truncated or non-JSON bodies.
            raise _Retryable(repr(e)) from e
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed reply: {reply!r:.200}") from e
        verdict = _parse_yes_no(text)
        if verdict is None:
            raise _Retryable(f"reply is neither yes nor no: {text!r:.100}")
        return verdict

    def _judge_one(self, item: GradeItem) -> bool | None:
        key = self._key_of(item)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        for attempt in range(self.max_retries + 1):
            try:
                verdict = self._request(item)
            except _Retryable as e:
                if attempt == self.max_retries:
                    log.warning("judge failed after %d attempts: %s", attempt + 1, e)
                    return None
                # Jitter spreads concurrent retries so they do not hit a rate limit together.
                delay = self.backoff_s * 2**attempt * (1 + 0.1 * random.random())
                time.sleep(max(delay, e.retry_after))
                continue
            except urllib.error.HTTPError as e:
                log.warning("judge request rejected (HTTP %d); not retried", e.code)
                return None
            with self._lock:
                self._cache[key] = verdict
                if self.cache_path is not None:
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    with self.cache_path.open("a", encoding="utf-8") as f:
                        f.write(("\n" if self._torn_tail else "") + json.dumps({"key": key, "verdict": verdict}) + "\n")
                    self._torn_tail = False
            return verdict
        return None

    def grade(self, items: Sequence[GradeItem]) -> list[bool | None]:
        if self.workers == 1 or len(items) <= 1:
            return [self._judge_one(it) for it in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self._judge_one, items))


def make_grader(
    judge_url: str | None = None,
    judge_model: str = "gpt-4.1",
    api_key_env: str = "OPENAI_API_KEY",
    cache_path: str | Path | None = None,
) -> LocalGrader | OpenAIJudge:
    """The local grader, or an :class:`OpenAIJudge` when ``judge_url`` is given."""
    if judge_url is None:
        return LocalGrader()
    return OpenAIJudge(judge_url, model=judge_model, api_key_env=api_key_env, cache_path=cache_path)


# --------------------------------------------------------------------------------------------
# Agreement with stored judge verdicts
# --------------------------------------------------------------------------------------------


def _load_verdicts(path: Path) -> tuple[list[GradeItem], list[bool]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    items, verdicts = [], []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i}: expected an object, got {type(rec).__name__}")
        for field in ("question", "gold", "prediction"):
            if not isinstance(rec.get(field), str):
                raise ValueError(f"{path}: record {i}: field {field!r} must be a string")
        if not isinstance(rec.get("judge_correct"), bool):
            raise ValueError(f"{path}: record {i}: field 'judge_correct' must be true or false")
        items.append(GradeItem(rec["question"], rec["gold"], rec["prediction"]))
        verdicts.append(rec["judge_correct"])
    return items, verdicts


def grade_check(path: str | Path, grader: Grader | None = None) -> dict:
    """Agreement of ``grader`` (default local) with stored judge verdicts.

    ``path`` is a JSON list of ``{question, gold, prediction, judge_correct}``. Returns ``n``
    (items compared), ``agreement``, and ``precision``/``recall`` of the grader's "correct"
    against the judge's "correct" (0.0 when undefined) with the counts ``tp, fp, fn, tn``;
    ``skipped`` counts items the grader could not grade (None). Raises ValueError naming the
    file and the record index/field on malformed input.
    """
    path = Path(path)
    items, truth = _load_verdicts(path)
    graded = (grader or LocalGrader()).grade(items)
    tp = fp = fn = tn = skipped = 0
    for verdict, judge in zip(graded, truth):
        if verdict is None:
            skipped += 1
        elif verdict and judge:
            tp += 1
        elif verdict:
            fp += 1
        elif judge:
            fn += 1
        else:
            tn += 1
    n = tp + fp + fn + tn
    return {
        "n": n,
        "agreement": (tp + tn) / n if n else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "skipped": skipped,
    }
