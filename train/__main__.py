"""``python -m train --config FILE.toml [--set section.key=value ...] [--resume] [--print-config]``.

Multi-GPU: ``accelerate launch [--multi_gpu --num_processes N] -m train --config FILE.toml``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config, to_toml
from .readers import DatasetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train or fine-tune a Paint-by-Example model (docs/training.md).",
    )
    parser.add_argument("--config", help="TOML config file (see train/configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one option, value in TOML syntax (repeatable), e.g. --set train.lr=5e-6",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from out_dir's latest checkpoint"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved, documented configuration as TOML and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.print_config:
            from .config import TrainConfig

            try:  # without a usable config file, show the documented defaults
                config = load_config(args.config, args.overrides)
            except ConfigError:
                if args.config:
                    raise
                config = TrainConfig()
            print(to_toml(config))
            return 0
        if not args.config:
            print("error: --config FILE.toml is required (see train/configs/)", file=sys.stderr)
            return 2
        config = load_config(args.config, args.overrides)
        from .trainer import TrainingError, train

        try:
            summary = train(config, resume=args.resume)
        except TrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"done: step {summary['step']}, models in {config.out_dir}/models")
        return 0
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _exit(code: int) -> None:
    """Exit; in a multi-process run skip interpreter teardown, which has been seen to hang after
    the process group is gone (rarely, on CPU/gloo), leaving the launcher waiting forever."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
