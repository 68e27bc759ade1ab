"""Invertible grid augmentations for ARC test-time training and augmented inference.

Every :class:`Transform` is a pair of pure functions on 2-D integer numpy arrays with
``inverse(forward(g)) == g``.  The families a SEAL recipe can switch on (``FAMILIES``):

- ``basic``: rot90, rot180, rot270, flip_lr (mirror left-right), flip_ud (mirror top-bottom),
  transpose, anti_transpose (reflection on the anti-diagonal);
- ``size``: double_resolution (each cell becomes 2x2), double_height, double_width; the inverses
  downsample by taking every second row/column;
- ``chain``: each basic transform followed by double_resolution;
- ``repeat``: tile_v (two copies stacked), tile_h (two side by side), tile_2x2; the inverse keeps the
  top-left tile.

Besides these, :func:`color_permutation` (a seeded permutation of colours 1..9, background 0 fixed)
and :func:`shuffle_examples` (demonstration order) are applied on top by the TTT data builder.
Size-changing transforms are skipped for grids that would exceed ``MAX_GRID_SIDE`` (30).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from seal_lm.arc.data import ArcExample, ArcTask
from seal_lm.arc.grids import Grid

__all__ = [
    "BASIC",
    "CHAIN",
    "FAMILIES",
    "IDENTITY",
    "MAX_GRID_SIDE",
    "REPEAT",
    "SIZE",
    "Transform",
    "augment_task",
    "color_permutation",
    "compose",
    "shuffle_examples",
]

MAX_GRID_SIDE = 30

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Transform:
    """A named invertible grid transform.

    ``scale`` is the (rows, cols) multiplier of the output shape relative to the input shape
    *after* any transposition, so a prediction whose shape is not a multiple of it cannot be the
    image of a grid and :meth:`invert` rejects it.
    """

    name: str
    forward: ArrayFn
    inverse: ArrayFn
    scale: tuple[int, int] = (1, 1)

    def apply(self, grid: Grid | np.ndarray) -> Grid:
        """``forward`` on a list grid, returning a list grid."""
        return self.forward(np.asarray(grid)).tolist()

    def fits(self, grid: Grid | np.ndarray, max_side: int = MAX_GRID_SIDE) -> bool:
        """Whether the transformed grid stays within ``max_side`` in both dimensions."""
        return max(self.forward(np.zeros(np.shape(grid), dtype=np.int8)).shape) <= max_side

    def invert(self, grid: Grid | np.ndarray | None) -> Grid | None:
        """Map a predicted grid back; ``None`` for ``None``, an empty grid or an impossible shape."""
        if grid is None:
            return None
        arr = np.asarray(grid)
        if arr.ndim != 2 or arr.size == 0 or arr.shape[0] % self.scale[0] or arr.shape[1] % self.scale[1]:
            return None
        out = self.inverse(arr)
        return out.tolist() if out.size else None


def _identity(g: np.ndarray) -> np.ndarray:
    return g


IDENTITY = Transform("identity", _identity, _identity)


def _t(name: str, f: ArrayFn, inv: ArrayFn, scale: tuple[int, int] = (1, 1)) -> Transform:
    return Transform(name, f, inv, scale)


def _anti_transpose(g: np.ndarray) -> np.ndarray:
    return g[::-1, ::-1].T


BASIC: list[Transform] = [
    _t("rot90", lambda g: np.rot90(g, 1), lambda g: np.rot90(g, -1)),
    _t("rot180", lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 2)),
    _t("rot270", lambda g: np.rot90(g, -1), lambda g: np.rot90(g, 1)),
    _t("flip_lr", np.fliplr, np.fliplr),
    _t("flip_ud", np.flipud, np.flipud),
    _t("transpose", lambda g: g.T, lambda g: g.T),
    _t("anti_transpose", _anti_transpose, _anti_transpose),
]

_DOUBLE_RES = _t(
    "double_resolution", lambda g: np.repeat(np.repeat(g, 2, axis=0), 2, axis=1), lambda g: g[::2, ::2], (2, 2)
)

SIZE: list[Transform] = [
    _DOUBLE_RES,
    _t("double_height", lambda g: np.repeat(g, 2, axis=0), lambda g: g[::2], (2, 1)),
    _t("double_width", lambda g: np.repeat(g, 2, axis=1), lambda g: g[:, ::2], (1, 2)),
]


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` left to right; the inverse undoes them right to left.

    The combined ``scale`` is the elementwise product, which is exact when only the last transform
    changes size (as for ``chain``) or the scales are square.
    """
    ts = [t for t in transforms if t is not IDENTITY] or [IDENTITY]
    if len(ts) == 1:
        return ts[0]

    def forward(g: np.ndarray) -> np.ndarray:
        for t in ts:
            g = t.forward(g)
        return g

    def inverse(g: np.ndarray) -> np.ndarray:
        for t in reversed(ts):
            g = t.inverse(g)
        return g

    sh = int(np.prod([t.scale[0] for t in ts]))
    sw = int(np.prod([t.scale[1] for t in ts]))
    return Transform("+".join(t.name for t in ts), forward, inverse, (sh, sw))


CHAIN: list[Transform] = [compose(b, _DOUBLE_RES) for b in BASIC]

REPEAT: list[Transform] = [
    _t("tile_v", lambda g: np.tile(g, (2, 1)), lambda g: g[: g.shape[0] // 2], (2, 1)),
    _t("tile_h", lambda g: np.tile(g, (1, 2)), lambda g: g[:, : g.shape[1] // 2], (1, 2)),
    _t("tile_2x2", lambda g: np.tile(g, (2, 2)), lambda g: g[: g.shape[0] // 2, : g.shape[1] // 2], (2, 2)),
]

FAMILIES: dict[str, list[Transform]] = {"basic": BASIC, "size": SIZE, "chain": CHAIN, "repeat": REPEAT}


def color_permutation(rng: np.random.Generator) -> Transform:
    """A random permutation of colours 1..9 (0, the background, stays 0) and its inverse."""
    perm = np.concatenate([[0], rng.permutation(np.arange(1, 10))])
    inv = np.argsort(perm)
    return Transform("colors_" + "".join(map(str, perm[1:])), lambda g: perm[g], lambda g: inv[g])


T = TypeVar("T")


def shuffle_examples(examples: Sequence[T], rng: np.random.Generator) -> list[T]:
    """The examples in a random order (a new list)."""
    return [examples[i] for i in rng.permutation(len(examples))]


def augment_task(task: ArcTask, transform: Transform, max_side: int = MAX_GRID_SIDE) -> ArcTask | None:
    """Apply ``transform`` to every grid of ``task``; ``None`` if any result would exceed ``max_side``.

    Unknown test outputs stay ``None``.  The new task id is ``"<id>/<transform name>"``.
    """
    if not all(transform.fits(g, max_side) for g in task.grids()):
        return None

    def ex(e: ArcExample) -> ArcExample:
        return ArcExample(transform.apply(e.input), None if e.output is None else transform.apply(e.output))

    tid = task.task_id if transform is IDENTITY else f"{task.task_id}/{transform.name}"
    return replace(task, task_id=tid, train=[ex(e) for e in task.train], test=[ex(e) for e in task.test])
