"""The `cfa` command: train, test, predict, export, serve, benchmark, demo, report.

training.py (train, test, benchmark, demo), inference.py (predict, export), serving.py (serve) and
reporting.py (report) build their sub-commands' parsers and run them; common.py holds what they share.
`python -m cfa_anomaly.cli` runs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cfa_anomaly import __version__
from cfa_anomaly.cli.common import (
    EXIT_CATEGORIES_FAILED,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    CommandParser,
    add_config_arguments,
    add_verbosity_arguments,
)
from cfa_anomaly.cli.inference import add_export_parser, add_predict_parser
from cfa_anomaly.cli.reporting import add_report_parser
from cfa_anomaly.cli.serving import add_serve_parser
from cfa_anomaly.cli.training import (
    add_benchmark_parser,
    add_demo_parser,
    add_test_parser,
    add_train_parser,
    cmd_train,
)
from cfa_anomaly.console import configure_logging
from cfa_anomaly.errors import CfaError

__all__ = ["EXIT_CATEGORIES_FAILED", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USER_ERROR",
           "add_config_arguments", "add_verbosity_arguments", "build_parser", "cmd_train", "main", "run"]
SUB_COMMANDS = (add_train_parser, add_test_parser, add_predict_parser, add_export_parser, add_serve_parser,
                add_benchmark_parser, add_demo_parser, add_report_parser)  # the order `cfa --help` lists
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """`cfa`'s parser: the global options and every sub-command's parser."""
    parser = argparse.ArgumentParser(prog="cfa", description="CFA anomaly detection and localization",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for add_parser in SUB_COMMANDS:
        add_parser(commands)
    for command in commands.choices.values():  # -v / -q after the sub-command too
        add_verbosity_arguments(command, default=argparse.SUPPRESS)
    return parser


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """Parse argv, set up logging and run the command; its exit code (a user error: its message, 2)."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", logging.INFO), getattr(args, "log_timestamps", False))
    log.debug("cfa %s: %s", __version__, {k: v for k, v in vars(args).items() if k != "func"})
    try:
        code = args.func(args)
    except CfaError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; a training run continues with `cfa train --resume <its run folder>`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code or EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())
