"""Should a newly trained miniature model replace the embedded one? One verdict over fresh worlds.

    python -m train.mini_verdict --candidate runs/mini-gpu/train/models/pbe-final.safetensors
                                 [--baseline models/pbe-mini.safetensors] [--worlds 11,12,13]
                                 [--cases 96] [--out out/mini-verdict]

Both models run the quality benchmark (``python -m train.eval synthetic``) on the same held-out
worlds (``--worlds``: at least three, none the training world 0), each model's reports are pooled
(``train.eval pool``), and the pooled figures are compared target by target (``TARGETS``). The
verdict is REPLACE only when the candidate is better on every one; the command never copies a
file: replacing ``models/pbe-mini.safetensors`` is a manual step (docs/miniature-world.md, "A
GPU recipe"). A finished world's report is reused when the command runs again on the same
``--out``. Exit code 0 either way (1 with ``--strict`` when the verdict is KEEP), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from exemplar_core.argtypes import positive_int
from exemplar_core.files import atomic_write_text

DEFAULT_BASELINE = Path(__file__).resolve().parent.parent / "models" / "pbe-mini.safetensors"
DEFAULT_WORLDS = (11, 12, 13)


def _colour(scale: str) -> Callable[[dict], float | None]:
    return lambda r: r["scales"].get(scale, {}).get("color_error")


def _ratio(r: dict) -> float | None:
    return r["checks"].get("color_error_halved_at_5", {}).get("ratio")


def _worst_rise(r: dict) -> float | None:
    errors = r["checks"].get("fidelity_not_worse_0_to_5", {}).get("color_errors")
    if not errors:
        return None
    return max(b - a for a, b in zip(errors, errors[1:], strict=False))


def _hole(r: dict) -> float | None:
    return (r.get("hole_fill") or {}).get("colour_error")


def _psnr(r: dict) -> float | None:
    return r["checks"].get("background_psnr_ge_45", {}).get("worst_db")


# (name, read from a pooled report, "lower" or "higher" is better). The benchmark's three targets
# (ratio, rise from s = 0 to 5, background PSNR) and the figures behind the demo's look: the colour
# error at each guided scale and the hole fill.
TARGETS: tuple[tuple[str, Callable[[dict], float | None], str], ...] = (
    ("colour error s=1", _colour("1"), "lower"),
    ("colour error s=3", _colour("3"), "lower"),
    ("colour error s=5", _colour("5"), "lower"),
    ("colour error s=7", _colour("7"), "lower"),
    ("colour error ratio s5/s0 (target <= 0.5)", _ratio, "lower"),
    ("largest rise of colour error from s=0 to 5 (target <= 0.01)", _worst_rise, "lower"),
    ("hole fill colour error", _hole, "lower"),
    ("background PSNR outside the feather band, dB (target >= 45)", _psnr, "higher"),
)


def compare(baseline: dict, candidate: dict) -> list[dict]:
    """Each target's two figures and whether the candidate is better (an equal PSNR counts as
    better when both are bit-exact backgrounds, inf dB)."""
    rows = []
    for name, read, better in TARGETS:
        old, new = read(baseline), read(candidate)
        if old is None or new is None:
            wins = False
        elif better == "lower":
            wins = new < old
        else:
            wins = new > old or (new == old == float("inf"))
        rows.append({"target": name, "baseline": old, "candidate": new, "better": wins})
    return rows


def _world_report(checkpoint: Path, world: int, out: Path, args) -> dict:
    from .eval import main as eval_main

    report = out / "report.json"
    if report.is_file():
        existing = json.loads(report.read_text(encoding="utf-8"))
        if existing.get("checkpoint") == str(checkpoint) and existing.get("cases") == args.cases:
            print(f"reusing {report}")
            return existing
    argv = [
        "synthetic",
        "--checkpoint",
        str(checkpoint),
        "--world-seed",
        str(world),
        "--cases",
        str(args.cases),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--out",
        str(out),
        "--overwrite",  # this command's own folder: a stale or partial report is replaced
    ]
    if args.scales:
        argv += ["--scales", args.scales]
    code = eval_main(argv)
    if code not in (0, 1):  # 1: a target missed, still a report
        raise ValueError(f"python -m train.eval {' '.join(argv)} failed (exit code {code})")
    return json.loads(report.read_text(encoding="utf-8"))


def _worlds(text: str) -> list[int]:
    try:
        worlds = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        worlds = []
    if len(worlds) < 3 or len(set(worlds)) != len(worlds) or 0 in worlds:
        raise argparse.ArgumentTypeError(
            f"--worlds takes at least three different world seeds other than 0 (the training "
            f"world), e.g. 11,12,13; got {text!r}"
        )
    return worlds


def _print(rows: list[dict], replace: bool, candidate: Path, baseline: Path) -> None:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(f"\n{'target':<62}{'baseline':>10}{'candidate':>11}  better")
    for row in rows:
        mark = "yes" if row["better"] else "no"
        print(f"{row['target']:<62}{fmt(row['baseline']):>10}{fmt(row['candidate']):>11}  {mark}")
    if replace:
        print(
            f"\nverdict: REPLACE: the candidate is better on every target. To make it the "
            f"embedded model (by hand):\n  cp {candidate} {baseline}"
        )
    else:
        missed = ", ".join(r["target"] for r in rows if not r["better"])
        print(f"\nverdict: KEEP {baseline.name}: the candidate is not better on {missed}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.mini_verdict",
        description=__doc__.split("\n")[0],
        epilog="See docs/miniature-world.md, 'A GPU recipe'.",
    )
    p.add_argument("--candidate", required=True, help="the newly trained single-file model")
    p.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="the embedded model")
    p.add_argument(
        "--worlds",
        type=_worlds,
        default=list(DEFAULT_WORLDS),
        help="comma-separated fresh world seeds, at least three (11,12,13)",
    )
    p.add_argument("--cases", type=positive_int, default=96, help="held-out cases per world (96)")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (20)")
    p.add_argument("--scales", default="", help="similarity scales (train.eval's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="out/mini-verdict", help="reports and verdict.json here")
    p.add_argument("--strict", action="store_true", help="exit 1 when the verdict is KEEP")
    args = p.parse_args(argv)
    from .eval import pool_reports

    baseline, candidate = Path(args.baseline), Path(args.candidate)
    for label, path in (("--baseline", baseline), ("--candidate", candidate)):
        if not path.is_file():
            print(f"error: {label} {path} is not a file", file=sys.stderr)
            return 2
    out = Path(args.out)
    try:
        pooled = {}
        for name, path in (("baseline", baseline), ("candidate", candidate)):
            reports = [_world_report(path, w, out / name / f"w{w}", args) for w in args.worlds]
            pooled[name] = pool_reports(reports, [f"world {w}" for w in args.worlds])
            atomic_write_text(out / name / "pooled.json", json.dumps(pooled[name], indent=2))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = compare(pooled["baseline"], pooled["candidate"])
    replace = all(row["better"] for row in rows)
    _print(rows, replace, candidate, baseline)
    verdict = {
        "verdict": "replace" if replace else "keep",
        "baseline": str(baseline),
        "candidate": str(candidate),
        "worlds": args.worlds,
        "cases_per_world": args.cases,
        "targets": rows,
    }
    atomic_write_text(out / "verdict.json", json.dumps(verdict, indent=2))
    print(f"wrote {out / 'verdict.json'}")
    return 1 if args.strict and not replace else 0


if __name__ == "__main__":
    raise SystemExit(main())
