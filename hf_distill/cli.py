"""The ``hf-distill`` command line: one sub-command per module under ``hf_distill.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module defining ``register(subparsers)``; each module adds its parser and sets ``func``.
COMMANDS = {
    "evaluate": "hf_distill.commands.evaluate",
    "embed": "hf_distill.commands.embed",
    "export-onnx": "hf_distill.commands.export_onnx",
    "show": "hf_distill.commands.show",
    "build-benchmark": "hf_distill.commands.build_benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-distill", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
