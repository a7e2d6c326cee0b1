"""``python -m train --config FILE.toml [--set section.key=value ...] [--resume] [--print-config]``.

Multi-GPU: ``accelerate launch [--multi_gpu --num_processes N] -m train --config FILE.toml``.

Exit codes: 0 done; 1 the run failed (diverged loss, a failed save); 2 bad input (config, data,
out_dir, a resume with nothing to continue, a missing package); 130 / 143 stopped by SIGINT /
SIGTERM after saving a checkpoint (docs/training.md, "Stopping and resuming").
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .preflight import PreflightError, require_training_extra


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


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run: the same arguments plus ``--resume``."""
    args = [a for a in argv if a != "--resume"] + ["--resume"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = (
        f"accelerate launch --num_processes {world} -m train" if world > 1 else ("python -m train")
    )
    return f"{launcher} {shlex.join(args)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if not args.print_config:
            require_training_extra()  # before anything else: a missing package wastes no work
        from .config import ConfigError, TrainConfig, load_config, to_toml
        from .readers import DatasetError
    except (PreflightError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.print_config:
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
        from .trainer import ResumeError, TrainingError, TrainingStopped, train

        try:
            summary = train(config, resume=args.resume)
        except TrainingStopped as stop:
            if stop.main_process:
                print(f"{stop}. Continue with:\n  {resume_command(argv)}", file=sys.stderr)
            from .signals import exit_code

            return exit_code(stop.signum)
        except ResumeError as exc:
            if exc.main_process:  # every rank raises it; the user reads it once
                print(f"error: {exc}", file=sys.stderr)
            return 2
        except TrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"done: step {summary['step']}, models in {config.out_dir}/models")
        return 0
    except (ConfigError, DatasetError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _exit(code: int) -> None:
    """Exit; in a multi-process run skip interpreter teardown, which can deadlock in the gloo
    process group's destructor (see ``train.trainer._FINISHED``) and leave the launcher waiting."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
