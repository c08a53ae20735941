"""Argument dataclasses to argparse and back, for the light subcommands.

The training command parses with transformers' `HfArgumentParser` (it extends `TrainingArguments`);
the data commands use this small equivalent so that `adamllm --help` and the data stages never
import transformers. Same conventions: a field's `metadata["help"]` is its help, `choices` its
choices, `aliases` its old spellings (kept when a flag is renamed; argparse lists them in --help),
snake_case flags with dash aliases, checks in the dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of `cls` (positional-free: every field is a --flag)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # Required flags first: a dataclass's inherited optional fields would otherwise lead its --help.
    ordered = sorted(
        dataclasses.fields(cls),
        key=lambda f: (
            not f.metadata.get(
                "required", f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
        ),
    )
    for f in ordered:
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        # An old spelling that is a field of `cls` itself is that field's flag there (run's --seed).
        flags += [a for a in f.metadata.get("aliases", ()) if a.removeprefix("--") not in names]
        # argparse %-formats help strings: "10%" must reach it as "10%%".
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "").replace("%", "%%")}
        required = f.metadata.get("required", False) or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        kind = hints[f.name]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
            kwargs["default"] = bool(f.default) if not required else False
        else:
            kwargs["type"] = kind if kind in (int, float) else str
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if required:
                kwargs["required"] = True
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if not required:
                    kwargs["help"] += f" (default: {kwargs['default']})"
        parser.add_argument(*flags, **kwargs)


def dataclass_from_namespace(cls: type[T], namespace: argparse.Namespace, parser: argparse.ArgumentParser) -> T:
    """Build the dataclass; its `__post_init__` errors become a usage error (exit 2) naming the flag."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
    try:
        return cls(**values)
    except ValueError as e:
        parser.error(str(e))


def add_dataclass_command(
    sub, name: str, cls: type, run, *, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of `cls`; `run` receives the built dataclass."""
    parser = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_arguments(parser, cls)
    parser.set_defaults(run=lambda ns: run(dataclass_from_namespace(cls, ns, parser)))
    return parser
