"""The `nativevlm` command. Each subcommand lives in `nativevlm/commands/<name>.py`, which registers its
parser and calls into the library, imported at the module's top; only the optional serving dependencies
(fastapi, uvicorn, httpx) are imported inside the handlers that need them, so every other command runs
without them. An error a user caused (`errors.UserError`, or a missing file) is printed as one line and exits
2, for every command."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError, one_line

SUBCOMMANDS = ("info", "data", "tokenizer", "train", "ask", "chat", "serve", "ui", "quickstart", "eval",
               "compare", "study", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nativevlm",
        description="Build, train, study, evaluate and serve native vision-language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"nativevlm.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (UserError, FileNotFoundError, ConnectionError) as e:
        print(f"nativevlm {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
