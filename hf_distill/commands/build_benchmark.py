"""``hf-distill build-benchmark``: build the offline multi-domain benchmark (what ``make data`` runs).

Same options as ``python -m hf_distill.data.benchmark``; prints the per-domain class and image counts.
"""

from __future__ import annotations

import argparse

from hf_distill.data.benchmark import add_build_arguments, run_build


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``build-benchmark`` sub-command."""
    parser = subparsers.add_parser(
        "build-benchmark",
        help="build the offline benchmark from data installed on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_build_arguments(parser)
    parser.set_defaults(func=run_build)
