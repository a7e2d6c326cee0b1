"""The runner's command line: ``python -m exemplar_core.headless`` and
``python -m exemplar_core headless`` (the same options, added by ``add_arguments``)."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..argtypes import positive_int, positive_seconds
from .client import DEFAULT_SERVER
from .errors import EXIT_OK, EXIT_USAGE, HeadlessError
from .run import RunOptions, run
from .workflow import parse_value

DESCRIPTION = (
    "Run an API-format workflow on a running ComfyUI: upload images, queue, stream progress, "
    "download the results. Exits 1 with the server's message when ComfyUI rejects or fails the "
    "workflow, 2 on bad arguments or when the server cannot be reached. With --manifest, run a "
    "batch manifest's jobs over one or several servers (--server repeated), resumable; exits 1 "
    "when a job failed or was left undone."
)


def server_url(text: str) -> str:
    """argparse type: an http(s)://host[:port] address (a bare host:port gets http://)."""
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parsed = urllib.parse.urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} has an invalid port; expected http://HOST:PORT"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(
            f"expected an address like http://127.0.0.1:8188, got {text!r}"
        )
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's options (shared by ``python -m exemplar_core headless`` and this module)."""
    parser.add_argument(
        "workflow",
        type=Path,
        nargs="?",
        help="API-format workflow (workflows/api/*.json); required without --manifest (default "
        "with --manifest: the pack's workflows/api/basic_exemplar_edit.json)",
    )
    parser.add_argument(
        "--server",
        type=server_url,
        action="append",
        help="address of a running ComfyUI; repeat it with --manifest to spread the jobs over "
        f"several servers (default: {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="run every job of a batch manifest (.jsonl or .csv, as for 'python -m exemplar_core "
        "batch') instead of one workflow run: each job's source, mask, exemplar and exemplar "
        "mask are uploaded to the server that runs it, its settings set on the workflow's nodes, "
        "its image saved as OUT/<id>.png and every attempt logged in OUT/results.jsonl; a rerun "
        "skips finished jobs (default: none)",
    )
    parser.add_argument(
        "--per-server",
        type=positive_int,
        help="with --manifest: jobs in flight on each server at once (default: 1)",
    )
    parser.add_argument(
        "--tries",
        type=positive_int,
        help="with --manifest: how many servers may go down under one job before it is recorded "
        "as failed; a server that goes down is dropped and its job run on another (default: 3)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --manifest: run again the jobs whose last attempt failed (default: off)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --manifest: redo every job and replace its output, even into a folder of a "
        "run with other settings (default: off, finished jobs are skipped and nothing replaced)",
    )
    parser.add_argument(
        "--source", type=Path, help="image for the loader titled 'source' (default: none)"
    )
    parser.add_argument(
        "--mask",
        type=Path,
        help="mask image for the loader titled 'mask', white = repaint (default: none)",
    )
    parser.add_argument(
        "--exemplar", type=Path, help="image for the loader titled 'exemplar' (default: none)"
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="TITLE=PATH",
        help="upload PATH into the image loader titled TITLE; repeatable (default: none)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TITLE.INPUT=VALUE",
        help="set a node input; VALUE is JSON when it parses; repeatable (default: none)",
    )
    parser.add_argument(
        "--model",
        help="model file name for every Paint-by-Example Loader (default: the workflow's own)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed for every sampler; with --manifest, for each job that gives none "
        "(default: the workflow's own)",
    )
    parser.add_argument(
        "--steps", type=positive_int, help="steps for every sampler (default: the workflow's own)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("comfyui-results"),
        help="folder for the downloaded images, created if missing; a name already taken there "
        "gets a -2, -3... suffix, nothing is overwritten; with --manifest, OUT/<job id>.png "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        help="seconds to wait for the workflow to finish (with --manifest: for each job) "
        "(default: %(default)g)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exemplar_core.headless", description=DESCRIPTION
    )
    add_arguments(parser)
    return parser


def parse_sets(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``--set TITLE.INPUT=VALUE`` options -> ``[("TITLE.INPUT", value)]``."""
    sets = []
    for item in items:
        target, sep, value = item.partition("=")
        if not sep:
            raise HeadlessError(f"--set needs TITLE.INPUT=VALUE, got {item!r}", EXIT_USAGE)
        sets.append((target, parse_value(value)))
    return sets


def options_from_args(args: argparse.Namespace) -> RunOptions:
    if args.workflow is None:
        raise HeadlessError("give the workflow to run (workflows/api/*.json)", EXIT_USAGE)
    farm_only = [
        option
        for option, given in (
            ("--per-server", args.per_server is not None),
            ("--tries", args.tries is not None),
            ("--retry-failed", args.retry_failed),
            ("--overwrite", args.overwrite),
        )
        if given
    ]
    if farm_only:
        raise HeadlessError(f"{', '.join(farm_only)} only applies with --manifest", EXIT_USAGE)
    servers = args.server or [DEFAULT_SERVER]
    if len(servers) > 1:
        raise HeadlessError(
            f"{len(servers)} --server given but one workflow run uses one server; several "
            f"servers share the jobs of a --manifest",
            EXIT_USAGE,
        )
    images: dict[str, Path] = {}
    for title in ("source", "mask", "exemplar"):
        if getattr(args, title) is not None:
            images[title] = getattr(args, title)
    for item in args.image:
        title, sep, path = item.partition("=")
        if not sep:
            raise HeadlessError(f"--image needs TITLE=PATH, got {item!r}", EXIT_USAGE)
        images[title] = Path(path)
    return RunOptions(
        workflow=args.workflow,
        server=servers[0],  # server_url has normalised it
        images=images,
        sets=parse_sets(args.set),
        model=args.model,
        seed=args.seed,
        steps=args.steps,
        out=args.out,
        timeout=args.timeout,
        quiet=args.quiet,
    )


def run_args(args: argparse.Namespace) -> int:
    """Run parsed arguments; prints the saved files, or the error, and returns the exit code."""
    try:
        if args.manifest is not None:
            from .farm import run_farm_args  # the batch package's manifest reader needs torch

            return run_farm_args(args)
        run(options_from_args(args))
    except HeadlessError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))
