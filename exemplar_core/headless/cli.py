"""The runner's command line: ``python -m exemplar_core.headless`` and
``python -m exemplar_core headless`` (the same options, added by ``add_arguments``)."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from ..argtypes import positive_int, positive_seconds
from .client import DEFAULT_SERVER
from .errors import EXIT_OK, EXIT_USAGE, HeadlessError
from .run import RunOptions, run
from .workflow import parse_value

DESCRIPTION = (
    "Run an API-format workflow on a running ComfyUI: upload images, queue, stream progress, "
    "download the results. Exits 1 with the server's message when ComfyUI rejects or fails the "
    "workflow, 2 on bad arguments or when the server cannot be reached."
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
    parser.add_argument("workflow", type=Path, help="API-format workflow (workflows/api/*.json)")
    parser.add_argument(
        "--server",
        type=server_url,
        default=DEFAULT_SERVER,
        help="address of the running ComfyUI (default: %(default)s)",
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
        "--seed", type=int, help="seed for every sampler (default: the workflow's own)"
    )
    parser.add_argument(
        "--steps", type=positive_int, help="steps for every sampler (default: the workflow's own)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("comfyui-results"),
        help="folder for the downloaded images, created if missing; a name already taken there "
        "gets a -2, -3... suffix, nothing is overwritten (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        help="seconds to wait for the workflow to finish (default: %(default)g)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exemplar_core.headless", description=DESCRIPTION
    )
    add_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    images: dict[str, Path] = {}
    for title in ("source", "mask", "exemplar"):
        if getattr(args, title) is not None:
            images[title] = getattr(args, title)
    for item in args.image:
        title, sep, path = item.partition("=")
        if not sep:
            raise HeadlessError(f"--image needs TITLE=PATH, got {item!r}", EXIT_USAGE)
        images[title] = Path(path)
    sets = []
    for item in args.set:
        target, sep, value = item.partition("=")
        if not sep:
            raise HeadlessError(f"--set needs TITLE.INPUT=VALUE, got {item!r}", EXIT_USAGE)
        sets.append((target, parse_value(value)))
    return RunOptions(
        workflow=args.workflow,
        server=args.server,  # server_url has normalised it
        images=images,
        sets=sets,
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
        run(options_from_args(args))
    except HeadlessError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))
