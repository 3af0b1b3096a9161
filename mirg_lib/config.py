"""Layered YAML params and one typed config per stage.

A profile file (``params/smoke.yaml``) names the file it ``extends`` (``base``) and overrides some
keys; sections are merged key by key. Each stage reads its section into a dataclass: an unknown or
mistyped key is an error that names the file chain, the key and, where one is close, the key meant.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .paths import PARAMS_DIR

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def resolve_params_file(profile: str | Path) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p.resolve()
    cand = PARAMS_DIR / f"{profile}.yaml"
    if not cand.is_file():
        known = sorted(q.stem for q in PARAMS_DIR.glob("*.yaml"))
        raise ConfigError(f"no params profile {str(profile)!r}; known profiles: {known}")
    return cand


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclasses.dataclass
class Params:
    """The merged params of a profile, and where they came from."""

    profile: str
    files: list[Path]
    data: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        sec = self.data.get(name, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{self.where}: section {name!r} must be a mapping")
        return sec

    @property
    def where(self) -> str:
        return " <- ".join(str(f) for f in self.files)


def parse_overrides(sets: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (command-line ``--set``; the value is YAML) as dotted-key overrides."""
    out = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {s!r}: expected KEY=VALUE (e.g. grpo.max_steps=10)")
        out[key] = yaml.safe_load(value)
    return out


# the params' top-level sections: section -> (module, dataclass, what reads it); mirg_lib.sections imports them
SECTIONS: dict[str, tuple[str, str, str]] = {
    "data": ("mirg_lib.world.build", "DataConfig", "01_data_synthesis"),
    "base_model": ("mirg_lib.base_model", "BaseModelConfig", "00_base_model"),
    "cot": ("mirg_lib.cot", "CotConfig", "01 (teacher samples) and 02_cot_filtering"),
    "sft": ("mirg_lib.sft", "SFTStageConfig", "03_lora_sft"),
    "rejection": ("mirg_lib.rejection", "RejectionConfig", "04_rejection_sampling"),
    "grpo": ("mirg_lib.grpo", "GRPOStageConfig", "05_grpo"),
    "eval": ("mirg_lib.evaluation", "EvalConfig", "06_evaluation"),
    "benchmarks": ("mirg_lib.benchmarks", "BenchmarksConfig", "06_evaluation, the papers' other benchmarks"),
    "ablations": ("mirg_lib.ablations", "AblationsConfig", "07_ablations"),
    "launch": ("mirg_lib.launch", "LaunchConfig", "03 and 05 (and 01, 04, 06 with the hf backend), on several processes"),
    "generation": ("mirg_lib.backends", "GenerationConfig", "01 (a model teacher), 04 and 06: the generation backend"),
}


def load_params(profile: str | Path = "embedded", overrides: dict[str, Any] | None = None) -> Params:
    """Merge a profile with the chain of files it extends, then ``overrides`` (dotted keys allowed:
    ``{"data.seed": 3}``). An unknown top-level section is an error naming it and the files."""
    files: list[Path] = []
    path = resolve_params_file(profile)
    chain: list[dict[str, Any]] = []
    while True:
        if path in files:
            raise ConfigError(f"params files extend each other in a loop: {files + [path]}")
        files.append(path)
        data = _read_yaml(path)
        parent = data.pop("extends", None)
        chain.append(data)
        if parent is None:
            break
        path = resolve_params_file(parent) if not Path(str(parent)).suffix else (path.parent / parent).resolve()
    merged: dict[str, Any] = {}
    for data in reversed(chain):
        merged = deep_merge(merged, data)
    set_overrides(merged, overrides or {})
    name = Path(str(profile)).stem
    params = Params(name, list(reversed(files)), merged)
    for key in merged:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{params.where}: unknown section {key!r}{hint}; known sections: {list(SECTIONS)}")
    _check_one_notation(merged, params.where)
    return params


# the sections that write or ask for Zhang et al.'s boxes: one notation for all of them
NOTATION_SECTIONS = ("cot", "sft", "rejection", "grpo", "eval")


def _check_one_notation(merged: dict[str, Any], where: str) -> None:
    """``box_notation`` is the same in every section of :data:`NOTATION_SECTIONS` (json where unset) and set in
    none of the per-variant / per-recipe tables, which would slip past this check. A malformed section is left
    to its stage's own error."""
    sections = {s: merged[s] if isinstance(merged.get(s), dict) else {} for s in NOTATION_SECTIONS}
    for s, table in (("sft", "variants"), ("grpo", "recipes")):
        overs = sections[s].get(table)
        for key, over in overs.items() if isinstance(overs, dict) else ():
            if isinstance(over, dict) and "box_notation" in over:
                raise ConfigError(f"{where}: {s}.{table}.{key}.box_notation: the box notation is one for every stage; set {s}.box_notation")
    notations = {f"{s}.box_notation": sections[s].get("box_notation", "json") for s in NOTATION_SECTIONS}
    if len(set(map(str, notations.values()))) > 1:
        raise ConfigError(f"{where}: the box notation differs between stages ({notations}): the teacher's replies, "
                          "the prompts the SFT, rejection sampling, GRPO and evaluation ask with and the format reward must agree")


def set_overrides(data: dict[str, Any], overrides: dict[str, Any], merge: bool = True) -> dict[str, Any]:
    """Set dotted-key ``overrides`` (``{"grpo.seed": 1}``) in ``data``, in place; a dict value is merged into a
    dict already there (``merge``, as the params files layer) or replaces it (``merge=False``: the value is the
    whole setting, e.g. ``grpo.rewards``). Returns ``data``."""
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        if merge and isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            if a is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r:.60}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r:.60}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r:.60}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r:.60}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r:.60}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r:.60}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r:.60}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r:.60}")
        return expand_env(value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r:.60}")
    return value


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, where: str = "") -> str:
    """``${NAME}`` in a params string replaced by the environment variable (the paper profiles name local
    checkpoints and data so); an unset variable is an error naming the key and the variable."""

    def sub(m: re.Match[str]) -> str:
        got = os.environ.get(m.group(1))
        if got is None:
            raise ConfigError(f"{where}: {m.group(0)} is not set in the environment (export {m.group(1)}=... ; docs/real_data.md)")
        return got

    return _ENV_VAR.sub(sub, value)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types are errors naming them."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r:.60}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; known keys: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e


def overlay(cfg: T, table: str, key: str, where: str) -> T:
    """``cfg`` with the settings of ``getattr(cfg, table)[key]`` set over it (each checked like the section's
    own keys) and ``table`` left empty, so that its digest holds only what it uses (``sft.variants``,
    ``grpo.recipes``)."""
    base = {k: v for k, v in dataclasses.asdict(cfg).items() if k != table}  # type: ignore[call-overload]
    return from_dict(type(cfg), {**base, **getattr(cfg, table).get(key, {})}, where)


def stage_config(cls: type[T], params: Params, section: str) -> T:
    return from_dict(cls, params.section(section), f"{params.where} [{section}]")


def digest(values: dict[str, Any]) -> str:
    """A stable 16-hex digest of JSON-able ``values`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Enters every stage's digest: bump it when a stage's outputs change meaning under the same settings, so that
# every run made before is redone rather than reused.
CACHE_VERSION = 3


def versioned_digest(values: dict[str, Any]) -> str:
    """:func:`digest` of ``values`` with :data:`CACHE_VERSION`: what every stage's outputs are stamped with."""
    return digest({"cache_version": CACHE_VERSION, **values})


def config_hash(cfg: Any) -> str:
    """A stable digest of a config: a stage whose outputs carry the same digest is up to date."""
    return versioned_digest(dataclasses.asdict(cfg))
