"""The original project's command line, kept working:

    python main.py --task_type anomaly --model_type unsupervised --model_name cfa \
        --yaml_config configs/anomaly/unsupervised/cfa/bottle.yaml [--data_root /path/to/mvtec_ad]

It trains CFA with the config and tests the final model (same as `cfa train --config ...`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from cfa_anomaly.cli import add_config_arguments, add_verbosity_arguments, cmd_train, run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and test CFA (original command line)")
    parser.add_argument("--task_type", required=True, choices=["anomaly"])
    parser.add_argument("--model_type", required=True, choices=["unsupervised"])
    parser.add_argument("--model_name", required=True, choices=["cfa"])
    parser.add_argument("--yaml_config", dest="config", required=True)
    parser.add_argument("--no-test", action="store_true", help="train and save the checkpoint only")
    add_config_arguments(parser)
    add_verbosity_arguments(parser)
    parser.set_defaults(func=cmd_train)
    return parser


if __name__ == "__main__":
    sys.exit(run(None, build_parser()))
