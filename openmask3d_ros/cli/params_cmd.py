"""``openmask3d params``: the node's parameter file (config/openmask3d.yaml), generated from the
parameter table and the pipeline configuration; ``--check`` compares a file with it."""
from __future__ import annotations

import sys
from pathlib import Path

from . import CliError


def register(subparsers) -> None:
    g = subparsers.add_parser(
        "params", help="print the node's parameter file (every parameter with its default)",
        description="Generate config/openmask3d.yaml from the parameter table "
                    "(openmask3d_ros/ros/params.py) and the pipeline configuration "
                    "(openmask3d_ros/core/config.py), descriptions as comments.")
    g.add_argument("-o", "--output", default=None, help="write it to this file instead")
    g.add_argument("--check", metavar="FILE", default=None,
                   help="exit with an error when FILE differs from the generated text")
    g.add_argument("--markdown", action="store_true",
                   help="print the node parameters as the Markdown table of docs/ros.md")
    g.set_defaults(func=run_params)


def run_params(args) -> int:
    from ..ros.param_file import parameter_file_text, parameter_table_markdown
    text = parameter_table_markdown() if args.markdown else parameter_file_text()
    if args.check:
        path = Path(args.check)
        if not path.is_file():
            raise CliError(f"parameter file not found: {path}")
        if not args.markdown:       # a broken file: its YAML error, not "regenerate it"
            from ..core.config import read_yaml
            read_yaml(path)
        if path.read_text(encoding="utf-8") != text:
            raise CliError(f"{path} is out of date: regenerate it with "
                           f"`openmask3d params -o {path}`")
        print(f"{path} is current")
    elif args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
