"""Typed configs: dataclasses filled from YAML recipes plus dotted ``key=value`` overrides.

A recipe is a YAML mapping whose keys are the fields of a config dataclass. A ``model:`` entry may name a model recipe
(``model: vatt-bbs`` reads ``recipes/models/vatt-bbs.yaml``); there is no other inheritance. Overrides such as
``model.droptoken_rate=0.25`` or ``model.video=medium`` are parsed as YAML scalars and applied on top. Unknown keys,
wrong types and numbers outside their range (``RANGES``: one table for every config class) are rejected with one line
naming the key, the file, and the closest known key or the expected range.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from vattcli.core.model import ModelConfig
from vattcli.errors import ConfigError

T = TypeVar("T")

RECIPES_DIR = Path(os.environ.get("VATT_RECIPES", Path(__file__).resolve().parents[1] / "recipes"))


def recipe_path(name: str, kind: str = "") -> Path:
    """Resolve a recipe given as a path or as a name under ``recipes/`` (``vatt-bbs``, ``models/vatt-bbs``)."""
    direct = Path(name)
    if direct.suffix in (".yaml", ".yml") and direct.is_file():
        return direct
    stem = name[:-5] if name.endswith(".yaml") else name
    for candidate in (RECIPES_DIR / kind / f"{stem}.yaml", RECIPES_DIR / f"{stem}.yaml"):
        if candidate.is_file():
            return candidate
    known = list_recipes(kind)
    close = difflib.get_close_matches(stem, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}" if known else ""
    raise ConfigError(f"no recipe {name!r} (looked for a file and under {RECIPES_DIR / kind}){hint}")


def list_recipes(kind: str = "") -> list[str]:
    root = RECIPES_DIR / kind
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")) if root.is_dir() else []


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


class _Whole(dict):
    """A mapping given whole on the command line (``data.train={a: DIR}``): it replaces, never merges."""


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``; values are YAML scalars or flow collections.
    A mapping value (``data.train={howto100m: DIR}``) replaces the recipe's mapping instead of merging into it."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. model.droptoken_rate=0.25)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = _Whole(value) if isinstance(value, dict) else value
    return tree


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. A mapping replaces a string (e.g. a named size) whole."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and not isinstance(value, _Whole) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples and mappings to dataclasses."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {where}: expected {expected}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where, source)
            except ConfigError:
                continue
        fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "parse"):
            try:
                return tp.parse(value)
            except ValueError as e:
                raise ConfigError(f"{source}: {where}: {e}") from None
        if isinstance(value, dict):
            return from_dict(tp, value, source=source, prefix=f"{where}.")
        fail(f"a mapping of {tp.__name__} fields")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"a list of {len(args)} items")
        return tuple(_convert(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        return [_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        fail(tp.__name__)
    return value


@dataclasses.dataclass(frozen=True)
class Bound:
    """A numeric range: ``low`` and ``high`` (None: unbounded), each inclusive unless ``low_open``/``high_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


COUNT = Bound(1)  # sizes, lengths, periods: at least 1
NON_NEGATIVE = Bound(0)  # optional amounts: 0 means none
POSITIVE = Bound(0, low_open=True)  # rates and scales that must not vanish
RATE = Bound(0, 1, high_open=True)  # dropout, DropToken, smoothing, Adam betas: a probability below 1
KEPT = Bound(0, 1, low_open=True)  # a fraction kept: more than nothing, at most all

# The range of every numeric field, per config class (by name: ``vattcli.train.config`` sits above this module).
# Tuples and mappings (``video_patch``, ``data.weights``) are checked element by element; None passes (unset).
RANGES: dict[str, dict[str, Bound]] = {
    "BackboneSpec": dict.fromkeys(("num_layers", "d_model", "d_ff", "num_heads", "d_kv"), COUNT),
    "ModelConfig": {
        **dict.fromkeys(("post_projection", "video_patch", "video_grid", "audio_patch", "audio_buckets",
                         "text_buckets", "vocab_size", "word_dim", "d_va", "d_vt", "relative_buckets",
                         "relative_max_distance"), COUNT),
        "dropout": RATE, "droptoken_rate": RATE},
    "DataConfig": {
        **dict.fromkeys(("batch_size", "frames", "size", "audio_rate", "num_captions", "text_len", "eval_windows",
                         "eval_crops"), COUNT),
        "num_workers": NON_NEGATIVE, "shuffle_buffer": NON_NEGATIVE, "audio_noise": NON_NEGATIVE,
        "weights": NON_NEGATIVE, "fps": POSITIVE},
    "OptimConfig": {"lr": POSITIVE, "end_lr": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "momentum": RATE,
                    "betas": RATE, "eps": POSITIVE, "weight_decay": NON_NEGATIVE, "clip_norm": POSITIVE},
    "TrainConfig": {
        **dict.fromkeys(("steps", "grad_accum", "log_every", "ckpt_every", "keep_last", "max_bad_steps"), COUNT),
        "seed": NON_NEGATIVE, "peak_tflops": POSITIVE},
    "LossConfig": {"va_weight": NON_NEGATIVE, "vt_weight": NON_NEGATIVE, "temperature": POSITIVE},
    "HeadConfig": {"dropout": RATE, "label_smoothing": RATE, "mixup_alpha": POSITIVE, "probe_rank": COUNT,
                   "probe_keep": KEPT},
}


def _numbers(value: Any, where: str) -> typing.Iterator[tuple[str, Any]]:
    """``(key, value)`` for a scalar, each element of a tuple/list and each value of a mapping; None is skipped."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}")
    elif value is not None:
        yield where, value


def check_ranges(obj: Any, *, source: str = "<config>", prefix: str = "") -> None:
    """Refuse a field of ``obj`` outside its range in ``RANGES`` with one line naming the key and the range."""
    for name, bound in RANGES.get(type(obj).__name__, {}).items():
        for key, value in _numbers(getattr(obj, name), f"{prefix}{name}"):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number:
                raise ConfigError(f"{source}: {key}={value!r}: expected a number {bound}")
            if not bound.holds(value):
                raise ConfigError(f"{source}: {key}={value!r} is out of range (expected {bound})")


def from_dict(cls: type[T], data: dict, *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys, wrong types and values outside ``RANGES`` with
    one clear line."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}", source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None
    check_ranges(obj, source=source, prefix=prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def write_config(obj: Any, path: Path) -> None:
    """Write the resolved config atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(obj), encoding="utf-8")
    os.replace(tmp, path)


def resolve_model_refs(data: dict, source: str) -> dict:
    """Replace ``model: NAME`` by the ``model`` mapping of ``recipes/models/NAME.yaml``; ``model: {from: NAME, ...}``
    takes that mapping and changes the keys given beside ``from`` (one level, no chains)."""
    model = data.get("model")
    name, changes = (model, {}) if isinstance(model, str) else (None, None)
    if isinstance(model, dict) and "from" in model:
        name, changes = model["from"], {k: v for k, v in model.items() if k != "from"}
    if name is None:
        return data
    path = recipe_path(str(name), "models")
    base = load_yaml(path).get("model")
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: expected a 'model:' mapping (referenced from {source})")
    return {**data, "model": merge(base, changes)}


def load_config(cls: type[T], recipe: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                kind: str = "") -> T:
    """Recipe (a path or a name under ``recipes/<kind>``) + overrides -> a validated ``cls``."""
    source, data = "<defaults>", {}
    if recipe is not None:
        path = recipe_path(str(recipe), kind)
        source, data = str(path), load_yaml(path)
    data = resolve_model_refs(data, source)
    update = parse_overrides(overrides)
    if update:
        data = resolve_model_refs(merge(data, update), "overrides")
        source = f"{source} + overrides"
    return from_dict(cls, data, source=source)


@dataclasses.dataclass
class ModelRecipe:
    """A model recipe file (``recipes/models/*.yaml``): the network's shape and nothing else."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
