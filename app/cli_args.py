"""Config dataclasses as command-line options: each field becomes an option (or argument) with its
help read from the class's ``Attributes:`` docstring, and parsed options build the config back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from pathlib import Path


def _attribute_help(cls) -> dict[str, str]:
    """Help text per field, read from the dataclass's Google-style ``Attributes:`` docstring."""
    doc = cls.__doc__ or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    helps, current = {}, None
    for line in section.splitlines():
        m = re.match(r"\s{4,8}(\w+): (.*)", line)
        if m:
            current = m.group(1)
            helps[current] = m.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps


def add_config_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Expose a config dataclass's fields as options (``positional`` ones as arguments)."""
    helps = _attribute_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.name in skip or not f.init:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base is bool:
            kind = _str2bool
        elif base in (int, float, Path, str):
            kind = base
        else:
            kind = str
        help_text = helps.get(f.name, "")
        choices = f.metadata.get("choices")  # a field that takes only some values says which
        if f.name in ("backend", "backends", "compare") and not choices:  # stage-2 backend names: what the registry holds
            from core.stage2 import registry

            help_text += f" Registered: {registry.describe()}."
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        if base is bool and default is False:
            # Off-by-default switches are plain flags: --no-auth, --ablate-context, --embed.
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true", help=help_text)
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            choices=choices,
            default=default if has_default else argparse.SUPPRESS,
            required=not has_default,
            help=f"{help_text} (default: {default if f.default_factory is dataclasses.MISSING else 'see docs'})",
        )


def _str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, found {text!r}")


def build_config(cls, ns: argparse.Namespace):
    """Instantiate ``cls`` from parsed args; options left at None fall back to field defaults."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        if value is None and f.default_factory is not dataclasses.MISSING:
            continue
        kwargs[f.name] = value
    return cls(**kwargs)


def write_json(obj: dict, path: Path | None) -> None:
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)
