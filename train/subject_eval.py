"""The subject experiment in the miniature world: does subject fine-tuning (LoRA or full) teach
one shape-colour-texture combination the base model renders poorly, and does prior preservation
keep the other objects as they were?

    python -m train.subject_eval scan  --checkpoint CKPT --out scan.json     # find a weak kind
    python -m train.subject_eval data  --subject star,pink,dots --out DIR    # its training data
    python -m train.subject_eval score --checkpoint CKPT --subject ... --out base.json
    python -m train.subject_eval table base.json lora.json full.json         # before / after

Each seed stream is its own ``train.synthetic`` split, so no scene is shared: ``subject-scan``
(the scan's cases), ``subject-train`` (the training scenes), ``subject-heldout`` (the held-out
subject edits) and ``eval`` (the quality benchmark's own cases, for the other objects). The
fidelity metrics are the benchmark's (``metrics.synthetic_fidelity``). docs/training.md,
"Subject experiment (miniature world)", has the recipe and the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from exemplar_core.files import atomic_write_text

from . import synthetic
from .eval import _standard_error as standard_error
from .eval import edit_case
from .synthetic import Kind

SCAN_SPLIT = "subject-scan"
TRAIN_SPLIT = "subject-train"
HELDOUT_SPLIT = "subject-heldout"
OTHER_SPLIT = "eval"  # the quality benchmark's held-out cases (train.eval synthetic)
CLASS_SPLIT = "subject-class"


def all_kinds() -> list[Kind]:
    """Every shape-colour-texture combination of the world (320)."""
    return [
        Kind(*combo)
        for combo in itertools.product(synthetic.SHAPES, synthetic.PALETTE, synthetic.TEXTURES)
    ]


def scan_candidates(count: int, seed: int = 0) -> list[Kind]:
    """``count`` distinct kinds drawn without replacement (deterministic by ``seed``)."""
    kinds = all_kinds()
    if not 1 <= count <= len(kinds):
        raise ValueError(f"--candidates must be 1..{len(kinds)}, got {count}")
    return random.Random(seed).sample(kinds, count)


def subject_cases(kind: Kind, count: int, seed: int, size: int, split: str) -> list[dict]:
    """``count`` edit cases whose exemplar is an object of ``kind`` (``split``'s scenes)."""
    return [synthetic.make_eval_case(i, seed, size, split, kind) for i in range(count)]


def other_cases(kind: Kind, count: int, seed: int, size: int) -> list[dict]:
    """The first ``count`` benchmark cases whose exemplar is not of ``kind``."""
    cases: list[dict] = []
    for i in itertools.count():
        if len(cases) == count:
            return cases
        case = synthetic.make_eval_case(i, seed, size)
        if not kind.of(synthetic.ObjectSpec(**case["object"])):
            cases.append(case)
    raise AssertionError("unreachable")


def write_data(kind: Kind, out: Path, scenes: int, exemplars: int, size: int, seed: int) -> dict:
    """The subject's training scenes (``subject.jsonl``: one box, the subject's) and class
    exemplars of other kinds for the prior samples (``class_exemplars/``). Returns a summary."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new folder so no files are replaced")
    (out / "subject").mkdir(parents=True, exist_ok=True)
    (out / "class_exemplars").mkdir()
    lines = []
    for i in range(scenes):
        image, objects = synthetic.make_kind_scene(kind, TRAIN_SPLIT, i, seed, size)
        rel = f"subject/{i:03d}.png"
        image.save(out / rel)
        lines.append(json.dumps({"image": rel, "boxes": [list(objects[0].box)]}))
    atomic_write_text(out / "subject.jsonl", "\n".join(lines) + "\n")
    others = [k for k in all_kinds() if k != kind]
    rng = random.Random(synthetic.scene_seed(CLASS_SPLIT, 0, seed))
    chosen = rng.sample(others, exemplars)
    for i, other in enumerate(chosen):
        spec = synthetic.ObjectSpec(other.shape, other.color, other.texture, (0, 0, 1, 1), 0.0)
        synthetic.make_exemplar(spec, rng).save(out / "class_exemplars" / f"{i:03d}.png")
    return {"subject": str(kind), "scenes": scenes, "class_exemplars": [str(k) for k in chosen]}


def _fidelity(editor, cases: list[dict], similarity: float, steps: int, seed: int) -> dict:
    """Edit each case; per-case colour error and shape IoU (``metrics.synthetic_fidelity``)."""
    from exemplar_core.editor import EditSettings

    colour, shape = [], []
    for i, case in enumerate(cases):
        settings = EditSettings(
            steps=steps, similarity=similarity, seed=seed + i, scheduler="ddim", feather=4
        )
        _, fid = edit_case(editor, case, settings)
        colour.append(round(fid.color_error, 5))
        shape.append(round(fid.shape_iou, 5))
    return {
        "cases": len(cases),
        "color_error": float(np.mean(colour)),
        "color_error_se": standard_error(colour),
        "shape_iou": float(np.mean(shape)),
        "shape_iou_se": standard_error(shape),
        "color_error_per_case": colour,
        "shape_iou_per_case": shape,
    }


def load_editor(checkpoint: str, loras: list[str]):
    """An editor on the CPU (fp32) for ``checkpoint`` with each LoRA file merged at strength 1
    (``Editor.apply_lora``, as ``edit --lora`` does)."""
    from exemplar_core.editor import Editor

    editor = Editor.from_file(checkpoint, device="cpu", dtype=torch.float32)
    for path in loras:
        editor.apply_lora(path)
    editor.progress = False
    return editor


def run_scan(args: argparse.Namespace) -> dict:
    editor = load_editor(args.checkpoint, [])
    size = editor.native_size
    rows = []
    for kind in scan_candidates(args.candidates, args.seed):
        cases = subject_cases(kind, args.cases, args.seed, size, SCAN_SPLIT)
        row = _fidelity(editor, cases, args.similarity, args.steps, args.seed)
        rows.append({"subject": str(kind), **row})
        print(
            f"{str(kind):<24} colour error {row['color_error']:.3f} +- {row['color_error_se']:.3f}"
            f"  shape IoU {row['shape_iou']:.3f}",
            flush=True,
        )
    rows.sort(key=lambda r: -r["color_error"])
    return {
        "checkpoint": args.checkpoint,
        "split": SCAN_SPLIT,
        "similarity": args.similarity,
        "steps": args.steps,
        "seed": args.seed,
        "candidates": rows,
    }


def run_score(args: argparse.Namespace) -> dict:
    kind = Kind.parse(args.subject)
    editor = load_editor(args.checkpoint, args.lora)
    size = editor.native_size
    started = time.perf_counter()
    report = {
        "label": args.label,
        "checkpoint": args.checkpoint,
        "lora": args.lora,
        "subject": str(kind),
        "similarity": args.similarity,
        "steps": args.steps,
        "seed": args.seed,
        "subject_heldout": _fidelity(
            editor,
            subject_cases(kind, args.cases, args.seed, size, HELDOUT_SPLIT),
            args.similarity,
            args.steps,
            args.seed,
        ),
        "other_objects": _fidelity(
            editor,
            other_cases(kind, args.cases, args.seed, size),
            args.similarity,
            args.steps,
            args.seed,
        ),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


_SETTINGS = ("subject", "similarity", "steps", "seed")


def table(reports: list[dict]) -> str:
    """A Markdown table of the reports, each against the first (the base model): mean +- standard
    error over the cases, and the change from the base, paired over the same cases."""
    base = reports[0]
    for report in reports[1:]:
        for key in _SETTINGS:
            if report.get(key) != base.get(key):
                raise ValueError(
                    f"report {report.get('label')!r} has {key} {report.get(key)!r} but the base "
                    f"{base.get('label')!r} has {base.get(key)!r}: only the same cases compare"
                )
    lines = [
        "| model | subject colour error | change | subject shape IoU | change "
        "| others colour error | change | others shape IoU | change |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        cells = [report.get("label") or report["checkpoint"]]
        for part in ("subject_heldout", "other_objects"):
            for metric in ("color_error", "shape_iou"):
                row = report[part]
                cells.append(f"{row[metric]:.3f} ± {row[metric + '_se']:.3f}")
                if report is base:
                    cells.append("")
                    continue
                delta = np.subtract(row[f"{metric}_per_case"], base[part][f"{metric}_per_case"])
                cells.append(f"{delta.mean():+.3f} ± {standard_error(delta):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    counts = (base["subject_heldout"]["cases"], base["other_objects"]["cases"])
    lines.append("")
    lines.append(
        f"Subject {base['subject']}: {counts[0]} held-out subject cases, {counts[1]} cases of "
        f"other objects, s = {base['similarity']:g}, {base['steps']} DDIM steps; mean ± standard "
        "error over the cases; change from the first row paired over the same cases."
    )
    return "\n".join(lines)


def _write(path: Path, report: dict, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite or another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.subject_eval", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def sampling(p: argparse.ArgumentParser, cases: int) -> None:
        p.add_argument("--cases", type=int, default=cases, help=f"edit cases ({cases})")
        p.add_argument("--similarity", type=float, default=5.0, help="scale s (5)")
        p.add_argument("--steps", type=int, default=20, help="DDIM steps (20)")
        p.add_argument("--seed", type=int, default=0, help="world and sampling seed (0)")
        p.add_argument("--out", required=True, help="report (JSON)")
        p.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("scan", help="the base model's fidelity on candidate subject kinds")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--candidates", type=int, default=24, help="kinds drawn to try (24)")
    sampling(s, 6)
    d = sub.add_parser("data", help="a subject's training scenes and class exemplars")
    d.add_argument("--subject", required=True, help="shape,colour,texture (e.g. star,pink,dots)")
    d.add_argument("--out", required=True, help="a new folder")
    d.add_argument("--scenes", type=int, default=4, help="training scenes of the subject (4)")
    d.add_argument("--class-exemplars", type=int, default=48, help="other kinds' exemplars (48)")
    d.add_argument("--size", type=int, default=64, help="scene side, px (64: the mini model)")
    d.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("score", help="held-out subject edits and other objects' edits")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--lora", action="append", default=[], help="LoRA file to merge (repeatable)")
    r.add_argument("--subject", required=True, help="shape,colour,texture")
    r.add_argument("--label", default="", help="the model's name in the table")
    sampling(r, 32)
    t = sub.add_parser("table", help="before/after table of score reports (the first: base)")
    t.add_argument("reports", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.reports]
            print(table(reports))
        elif args.command == "data":
            if not 1 <= args.scenes or args.class_exemplars < 1:
                raise ValueError("--scenes and --class-exemplars must be at least 1")
            summary = write_data(
                Kind.parse(args.subject),
                Path(args.out),
                args.scenes,
                args.class_exemplars,
                args.size,
                args.seed,
            )
            print(f"wrote {args.scenes} subject scenes and class exemplars to {args.out}")
            atomic_write_text(Path(args.out) / "summary.json", json.dumps(summary, indent=1))
        else:
            if args.cases < 2 or args.steps < 1:
                raise ValueError(
                    f"need at least 2 cases and 1 step, got {args.cases}, {args.steps}"
                )
            report = run_scan(args) if args.command == "scan" else run_score(args)
            if args.command == "score":
                for part in ("subject_heldout", "other_objects"):
                    row = report[part]
                    print(
                        f"{part:<16} colour error {row['color_error']:.3f} +- "
                        f"{row['color_error_se']:.3f}  shape IoU {row['shape_iou']:.3f} +- "
                        f"{row['shape_iou_se']:.3f} ({row['cases']} cases)"
                    )
            _write(Path(args.out), report, args.overwrite)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
