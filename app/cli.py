"""The ``slopewatch`` command line: the parser (commands are listed in ``app.cli_commands``) and ``main``."""

from __future__ import annotations

import argparse
import sys

from app import cli_commands
from core.errors import SlopewatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slopewatch", description="Drainage inspection of earth embankments.")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {
        name: sub.add_parser(name, help=text).add_subparsers(dest="what", required=True)
        for name, text in (("train", "train a model"), ("evaluate", "score a model on a labelled dataset"),
                           ("bench", "measure speed on this machine"))
    }
    cli_commands.register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except (SlopewatchError, ValueError) as exc:
        print(f"slopewatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
