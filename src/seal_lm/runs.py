"""Run directories: the resolved config, an append-only log of finished units, and outputs.

Every unit of work (one self-edit evaluation, one generation batch, ...) has a key. When a unit
finishes, its record is appended to `units.jsonl` and flushed to disk; rerunning the same command
reads the log and skips finished keys, so a crash loses at most the unit in flight. A truncated last
line (a crash mid-write) is ignored. A different config in an existing directory is refused rather
than silently mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .config import EXECUTION_FIELDS, to_dict


class RunDir:
    def __init__(self, path: str | Path, config, allow_config_change: bool = False,
                 additive: tuple[str, ...] = EXECUTION_FIELDS):
        """`additive` fields may differ from the stored config: they add work or change where it runs,
        never what a finished unit means (e.g. another generator row, more passages)."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.units_path = self.path / "units.jsonl"
        cfg = to_dict(config) if not isinstance(config, dict) else config
        defaults = _defaults(config)
        cfg_path = self.path / "config.yaml"
        if cfg_path.exists() and not allow_config_change:
            old = yaml.safe_load(cfg_path.read_text()) or {}
            # A field the stored config lacks (also inside a nested config) matches its default: runs made
            # before the field existed resume. New fields must therefore default to the old behaviour.
            old = _fill(old, defaults)
            diff = sorted(k for k in set(old) | set(cfg) if k not in additive and _canon(old.get(k)) != _canon(cfg.get(k)))
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with a different config (fields {diff}); "
                    "use another --out directory, or delete this one to start over"
                )
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.units: dict[str, dict[str, Any]] = {}
        if self.units_path.exists():
            raw = self.units_path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # a torn last line: end it so the next record is whole
                with open(self.units_path, "ab") as f:
                    f.write(b"\n")
            self.units = read_units(self.units_path)
        self.resumed = len(self.units)

    def done(self, key: str) -> bool:
        return key in self.units

    def get(self, key: str) -> dict[str, Any]:
        return self.units[key]

    def record(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        rec = {"unit": key, **data}
        with open(self.units_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.units[key] = rec
        return rec

    def write_json(self, name: str, data: Any) -> Path:
        """Write an output atomically (tmp + rename), so readers never see half a file."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        tmp.replace(p)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
        return p


def read_units(units_path: str | Path) -> dict[str, dict[str, Any]]:
    """The finished units of a run's units.jsonl, by key (read-only; the last record of a key wins)."""
    units: dict[str, dict[str, Any]] = {}
    for line in Path(units_path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that unit simply runs again
        if isinstance(rec, dict) and "unit" in rec:
            units[rec["unit"]] = rec
    return units


def _defaults(config) -> dict:
    try:
        return to_dict(type(config)())
    except Exception:  # a plain dict, or a config class without defaults for every field
        return {}


def _fill(stored: dict, defaults: dict) -> dict:
    out = dict(stored)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _fill(out[k], v)
    return out


def _canon(x):
    return json.loads(json.dumps(x, sort_keys=True, default=str))
