"""The params' sections, each read by one stage into its typed config, and the defaults file made from them.

The dataclasses are the one place defaults live; ``params/base.yaml`` is generated from them
(``python -m mirg_lib defaults``; a test checks it is current), with each field's one-line help as its comment.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import yaml

from .config import SECTIONS, Params, stage_config
from .paths import PARAMS_DIR

DEFAULTS_FILE = PARAMS_DIR / "base.yaml"


def section_class(name: str) -> type:
    module, cls, _ = SECTIONS[name]
    return getattr(importlib.import_module(module), cls)


def check_params(params: Params) -> dict[str, Any]:
    """Every section of ``params`` read into its typed config, so that a typo anywhere fails before the first
    stage runs (the error names the files, the section and the key). Returns the configs by section."""
    return {name: stage_config(section_class(name), params, name) for name in SECTIONS}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip().removesuffix("\n...").strip()


def defaults_yaml() -> str:
    """The text of ``params/base.yaml``: every section's fields at their dataclass defaults, helps as comments."""
    lines = [
        "# Every setting at its default, generated from the stage configs' dataclasses by",
        "# `python -m mirg_lib defaults` (a test checks it is current: edit the dataclasses, not this file).",
        "# A profile `extends: base` and overrides only what it changes; an unknown or mistyped key is an error.",
    ]
    for name, (module, cls_name, reader) in SECTIONS.items():
        cls = section_class(name)
        lines += ["", f"{name}:".ljust(32) + f"# {reader} -> {module.removesuffix('.build')}.{cls_name}"]
        for f in dataclasses.fields(cls):
            entry = f"  {f.name}: {_flow(_default(f))}"
            help_text = f.metadata.get("help", "")
            if "\n" in help_text:
                raise ValueError(f"{cls_name}.{f.name}: a help string is one line")
            lines.append(entry.ljust(max(32, len(entry) + 2)) + f"# {help_text}" if help_text else entry)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_defaults() -> str:
    DEFAULTS_FILE.write_text(defaults_yaml(), encoding="utf-8")
    return str(DEFAULTS_FILE)
