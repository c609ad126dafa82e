"""The ``openmask3d`` command line: one module per group of subcommands, each with ``register``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module exposes ``register(subparsers)``; its subcommands set ``func(args) -> int``.
SUBCOMMAND_MODULES = ("scene_cmds", "node_cmd", "params_cmd", "bag_cmds", "eval_cmd",
                      "render_cmd", "batch_cmd")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmask3d", description="Open-vocabulary 3D instance segmentation (OpenMask3D).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (implies -v)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input (``InputError`` and the other ``ValueError``/``OSError``
    kinds) prints one line naming the file or field and exits 2; any other failure prints one
    line and exits 1. ``--debug`` re-raises instead, showing the traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"openmask3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CliError, OSError, ValueError, KeyError) as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"openmask3d {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:       # a bug or a library failure: one line, traceback on --debug
        if args.debug:
            raise
        print(f"openmask3d {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
