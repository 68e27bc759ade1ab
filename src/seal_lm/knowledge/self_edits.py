"""Turn a knowledge self-edit (free text) into training sequences, as the SEAL paper does.

- "---" separates segments; every non-empty line of a segment becomes its own sequence;
- a leading preamble ("Sure, here are some implications:") is dropped when the list starts at line 2;
- self-QA output is split per "Question N:" block instead of per line;
- every sequence is prefixed with the passage title ("{title}\\n{text}"), and the passage itself is
  always added as the last sequence (the model must at least see what it should learn).
"""

from __future__ import annotations

import re

SEQUENCE_TEMPLATE = "{title}\n{text}"
_QUESTION_BLOCK = re.compile(r"\n(?=\s*Question\s+\d+\s*:)")
_LIST_START = re.compile(r"^\s*(\d+[.)]|[-*•])\s")


def split_self_edit(text: str, self_qa: bool = False) -> list[str]:
    """The self-edit's units of training text (without the title), empty ones dropped."""
    text = (text or "").strip()
    if not text:
        return []
    if self_qa or (re.search(r"Question\s+\d+\s*:", text) and re.search(r"Answer\s*\d*\s*:", text)):
        blocks = [b.strip() for b in _QUESTION_BLOCK.split(text) if b.strip()]
        if blocks and not blocks[0].lstrip().startswith("Question"):
            blocks[0] = "Question 1: " + blocks[0]
        return blocks
    segments = [s for s in text.split("---") if s.strip()] or [text]
    lines = [ln.strip() for seg in segments for ln in seg.splitlines() if ln.strip()]
    if len(lines) > 1 and _LIST_START.match(lines[1]) and not _LIST_START.match(lines[0]):
        lines = lines[1:]  # a chatty preamble before the list
    return lines


def training_sequences(title: str, context: str, self_edit: str | None, self_qa: bool = False,
                       include_passage: bool = True, max_sequences: int | None = None) -> list[str]:
    """Training sequences for one (passage, self-edit). self_edit=None: the passage alone."""
    units = split_self_edit(self_edit, self_qa) if self_edit is not None else []
    if max_sequences is not None:
        units = units[:max_sequences]
    seqs = [SEQUENCE_TEMPLATE.format(title=title, text=u) for u in units]
    if include_passage:
        seqs.append(SEQUENCE_TEMPLATE.format(title=title, text=context.strip()))
    return seqs
