"""Small statistics used by the tables: bootstrap confidence intervals over contexts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    def fmt(self, pct: bool = True) -> str:
        if self.n == 0:
            return "n/a"
        f = 100.0 if pct else 1.0
        return f"{self.mean * f:.1f} [{self.low * f:.1f}, {self.high * f:.1f}]"


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> MeanCI:
    """Mean and percentile-bootstrap CI of `values` (one value per context, e.g. per passage)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    if x.size == 1:
        return MeanCI(float(x[0]), float(x[0]), float(x[0]), 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return MeanCI(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), int(x.size))
