"""Dataclasses are the config: the same fields come from YAML (`--config FILE`) and CLI flags.

Nested dataclass fields are flags with a dot: `--train.epochs 5`, `--lora.r 16`. Precedence:
defaults < YAML file < flags. `to_dict` / `from_dict` round-trip a config through YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _base_type(tp):
    """(scalar type, is_optional, is_sequence) of an annotation like `int | None` or `tuple[str, ...]`."""
    origin = typing.get_origin(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return typing.get_args(tp)[0], optional, True
    if origin is typing.Literal:
        return str, optional, False
    return tp, optional, False


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


@dataclasses.dataclass
class RunOptions:
    """Where a command runs and where it writes; shared by every command's config."""

    device: str | None = None
    """cpu, cuda, ...; default: cuda when available."""
    dtype: str | None = None
    """float32 / bfloat16; default: fp32 on CPU, bf16 on CUDA."""
    seed: int = 0
    """Seeds self-edit sampling, data order and adapter initialisation."""
    out: str | None = None
    """Run directory (default runs/<command>-<config hash>); rerun the same command to resume."""
    progress: bool = True
    """Show progress bars."""


EXECUTION_FIELDS = ("out", "progress", "executor", "ray_address", "ray_actors", "ray_gpus_per_actor", "workers")
"""Config fields that change where a run executes and how it reports, never what a finished unit means:
left out of default run-directory names, and free to change when a run is resumed."""


@dataclasses.dataclass
class ExecutorOptions:
    """Where self-edit evaluations run: in this process, in worker processes, or on Ray actors (each holding
    the model)."""

    executor: str = "local"
    """local (this process), processes (worker processes on this machine, each holding the model: faster
    than one process on a multi-core CPU, see seal_lm/executors.py) or ray (long-lived actors each holding
    the model, on this machine or a cluster)."""
    workers: int = 2
    """Worker processes of the processes executor; each uses cores // workers torch threads."""
    ray_address: str | None = None
    """Ray head address (HOST:6379) of a running cluster; None starts a local Ray instance."""
    ray_actors: int = 2
    """Ray actors, each holding the model."""
    ray_gpus_per_actor: float = 0.0
    """GPUs each Ray actor reserves (e.g. 1, or 0.5 to pack two per GPU)."""

    def __post_init__(self):
        if self.executor not in ("local", "processes", "ray"):
            raise ValueError(f"executor must be local, processes or ray, got {self.executor!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def executor_kwargs(self) -> dict:
        """These options as `executors.make_executor` keyword arguments (beside `executor` itself)."""
        return {"workers": self.workers, "ray_address": self.ray_address, "ray_actors": self.ray_actors,
                "ray_gpus_per_actor": self.ray_gpus_per_actor}


def ordered_fields(cls) -> list[dataclasses.Field]:
    """A config's own fields first (declaration order), then those of the option groups it inherits."""
    cls = cls if isinstance(cls, type) else type(cls)
    own = cls.__dict__.get("__annotations__", {})
    fs = dataclasses.fields(cls)
    return [f for f in fs if f.name in own] + [f for f in fs if f.name not in own]


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under fields (TRL style) become --help texts (inherited fields included)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                docs.setdefault(a.target.id, str(b.value.value).strip())
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in ordered_fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, tp, prefix=f"{prefix}{f.name}.")
            continue
        scalar, _, seq = _base_type(tp)
        conv = _parse_bool if scalar is bool else scalar
        flag = f"--{prefix}{f.name}"
        kw: dict[str, Any] = dict(dest=f"{prefix}{f.name}", default=argparse.SUPPRESS, help=docs.get(f.name))
        if seq:
            kw.update(nargs="+", type=conv)
        else:
            kw.update(type=conv)
        names = [flag] + ([flag.replace("_", "-")] if "_" in f.name else [])
        parser.add_argument(*names, **kw)


def to_dict(cfg) -> dict[str, Any]:
    out = {}
    for f in ordered_fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, v = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: field {f.name!r} must be a mapping")
            # Start from the field's own default (its default_factory may differ from the class
            # defaults), so `--sft.epochs 1` keeps the other SFT settings.
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            elif f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = tp()
            kwargs[f.name] = from_dict(tp, {**to_dict(default), **v}, f"{where}.{f.name}")
            continue
        scalar, optional, seq = _base_type(tp)
        if v is None:
            if not optional:
                raise ValueError(f"{where}: field {f.name!r} may not be null")
            kwargs[f.name] = None
            continue
        try:
            if seq:
                vals = v if isinstance(v, (list, tuple)) else [v]
                v = [scalar(x) if scalar in (int, float, str) else x for x in vals]
                v = tuple(v) if typing.get_origin(tp) is tuple or "tuple" in str(tp) else v
            elif scalar is bool:
                v = v if isinstance(v, bool) else _parse_bool(str(v))
            elif scalar in (int, float, str):
                if scalar is int and isinstance(v, float) and not v.is_integer():
                    raise ValueError("not an integer")
                v = scalar(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{where}: field {f.name!r} has a bad value {data[f.name]!r}: {e}") from None
        kwargs[f.name] = v
    return cls(**kwargs)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        d = out
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(cls: type[T], args: argparse.Namespace, defaults: T | None = None) -> T:
    """defaults (the class's, or `defaults`) < YAML file (args.config) < flags."""
    data: dict[str, Any] = to_dict(defaults) if defaults is not None else {}
    cfg_path = getattr(args, "config", None)
    if cfg_path:
        try:
            loaded = yaml.safe_load(Path(cfg_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read config file {cfg_path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg_path}: the config must be a mapping")
        data = _merge(data, loaded)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func", "subcommand")}
    data = _merge(data, _nest(flags))
    return from_dict(cls, data, where=str(cfg_path or "flags"))


def config_hash(cfg, exclude: tuple[str, ...] = ()) -> str:
    """Short stable hash of a config (fields in `exclude` left out), naming default run directories."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
