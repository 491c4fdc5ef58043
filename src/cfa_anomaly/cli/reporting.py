"""`cfa report`: a run's report.html; and the page train, test, predict, benchmark and demo write when they
finish (unless --no-report)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cfa_anomaly import runfiles
from cfa_anomaly.errors import CfaError

if TYPE_CHECKING:
    from cfa_anomaly.cli.common import Commands
    from cfa_anomaly.thresholds import Thresholds

log = logging.getLogger(__name__)


def finish_with_report(args: argparse.Namespace, folder: Path, thresholds: Thresholds | None = None) -> None:
    """Write folder's report.html unless --no-report, and print its path; thresholds: those `cfa predict`
    decided with. The run's results are written already: a page that cannot be made is a warning, not a
    failed command."""
    if getattr(args, "no_report", False):
        return
    from cfa_anomaly.html_report import write_report
    from cfa_anomaly.report_data import HeldOut

    try:
        path = write_report(folder, None if thresholds is None else HeldOut.of(thresholds))
    except (CfaError, OSError) as err:
        log.warning("%s not written: %s (`cfa report %s` tries again)", runfiles.REPORT, err, folder)
        return
    print(f"report: {path}")


def cmd_report(args: argparse.Namespace) -> None:
    from cfa_anomaly.html_report import write_report

    print(f"report: {write_report(Path(args.run))}")


def add_report_parser(commands: Commands) -> None:
    report = commands.add_parser(
        "report", help=f"write {runfiles.REPORT}: a self-contained page of a run (tables, ROC, images, "
                       "threshold slider)",
        description=f"Write RUN/{runfiles.REPORT}, a page that opens from the disk with no server or "
                    "network: the result tables, ROC curve and score histogram, every scored image as a "
                    "thumbnail (sorted, filtered by defect kind and outcome; a click shows its panel), a "
                    "threshold slider that recomputes the decisions and counts, and the run's config, "
                    f"versions, machine and timings. Thumbnails go to RUN/{runfiles.REPORT_FILES}/.")
    report.add_argument("run", metavar="RUN",
                        help="a folder of cfa train / cfa test (metrics.json), cfa benchmark / cfa demo "
                             "(summary.json: each cell's page too) or cfa predict (scores.csv)")
    report.set_defaults(func=cmd_report)
