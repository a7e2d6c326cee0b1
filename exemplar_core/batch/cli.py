"""``python -m exemplar_core batch``: the command line of the batch editor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..argtypes import positive_int

EXIT_FAILED = 1  # a job failed or a manifest line was no job; the others ran
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}

DESCRIPTION = (
    "Run every edit of MANIFEST (.jsonl: one JSON object per line; .csv: a header row naming the "
    "fields) with one model load, several jobs per UNet batch where their settings allow. A "
    "job's fields: id (its output's name, letters, digits, '.', '_', '-'; default line-NNNNNN "
    "from its manifest line), source, mask (white = edit), exemplar, exemplar_mask (optional, "
    "white = the object), and any edit setting by its field name (seed, steps, similarity, "
    "scheduler, size, context_margin, feather, mask_grow, mask_blur, color_match, paste_back, "
    "whole_image, mask_resize, exemplar_resize, exemplar_expand, eta); the options below are "
    "the defaults of the settings a job leaves out. Relative paths are read from the "
    "manifest's folder. Each output is DIR/<id>.png, written atomically; DIR/results.jsonl "
    "records every attempt (results.rank<r>.jsonl for process r of a sharded run) and "
    "DIR/batch-run.json the run's model and defaults. Run the same command again to resume: "
    "finished jobs are skipped. Under `accelerate launch` or torchrun each process takes every "
    "n-th job (by id). Exit status: 0 all jobs done, 1 some job failed or some manifest line "
    "is no job (see results.jsonl), 2 bad input (missing or empty manifest, an --out folder "
    "of another run, a bad option), 130/143 stopped by SIGINT/SIGTERM (what was done is kept)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_edit_options
    from ..editor import EditSettings

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "manifest",
        nargs="?",
        metavar="MANIFEST",
        help="the jobs: a .jsonl or .csv file (see above)",
    )
    what.add_argument(
        "--cocoee",
        metavar="FOLDER",
        help="instead of a manifest, every image of the COCOEE test bench in FOLDER (its "
        "official layout: GT_3500, Ref_3500, Mask_bbox_3500), its exemplars and masks linked "
        "into DIR so that `python -m train.eval folder --results DIR` scores it; the settings "
        "left at the editor's defaults take the official ones (50 PLMS steps, similarity 5, "
        "seed 42, the whole image, no paste-back) (default: none)",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the model: official .ckpt/.safetensors, a diffusers folder or this pack's single "
        "file (required)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the folder for the outputs and results; created if missing (required)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="jobs read and edited together; jobs of one processing size, steps, scheduler, "
        "similarity and eta share a UNet batch of up to this many (default: %(default)s)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the jobs whose last attempt failed (default: off, they are skipped)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every job and replace existing outputs, and accept an --out folder of a run "
        "with other settings (default: off: finished jobs are skipped, an existing output is "
        "never replaced)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar; the summary line is still printed (default: off)",
    )
    add_edit_options(p)
    p.add_argument(
        "--eta",
        type=float,
        default=EditSettings().eta,
        help="DDIM's eta, 0 to 1: above 0 each step draws noise (default: %(default)s)",
    )


def run_args(args: argparse.Namespace) -> int:
    import torch

    from ..cli import device_named, dtype_named, edit_settings_of, read_loras
    from ..editor import Editor, EditSettings
    from ..files import check_out_folder
    from ..lora import parse_lora_argument
    from .jobs import read_manifest
    from .results import RunFingerprint, checkpoint_identity
    from .run import BatchOptions, current_shard, run_batch

    out_dir = check_out_folder(args.out)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise ValueError(f"--checkpoint not found: {checkpoint}")
    defaults = {**edit_settings_of(args), "eta": args.eta}
    if args.cocoee:
        from . import cocoee

        defaults = cocoee.cocoee_defaults(defaults)  # the official settings, options given win
    names = {
        **{k: "--" + k.replace("_", "-") for k in defaults},
        **(getattr(args, "options", None) or {}),
    }
    names["paste_back"] = "--no-paste-back"
    EditSettings(**defaults, names=names)  # a bad default fails here, before any work
    if args.cocoee:
        jobs, problems = cocoee.cocoee_jobs(Path(args.cocoee)), []
    else:
        jobs, problems = read_manifest(Path(args.manifest))
    for problem in problems:
        print(f"{args.manifest}: {problem}", file=sys.stderr)
    if not jobs:
        raise ValueError(f"{args.manifest or args.cocoee}: no job to run (see above)")
    lora_args = [parse_lora_argument(text, "--lora") for text in args.lora]
    loras = read_loras(lora_args)
    shard = current_shard()
    fingerprint = RunFingerprint(
        checkpoint=checkpoint_identity(checkpoint),
        defaults={**defaults, "resize_mask": args.resize_mask},
        runner="editor",
        extra={
            "dtype": args.dtype,
            "loras": [[Path(p).name, Path(p).stat().st_size, s] for p, s in lora_args],
        },
    )
    fingerprint.claim(out_dir, args.overwrite)
    if args.cocoee:  # exemplars and masks beside the results, as train.eval folder reads them
        cocoee.write_eval_layout(Path(args.cocoee), out_dir, overwrite=args.overwrite)

    device = device_named(args.device)
    if shard.sharded and device != "cpu" and torch.cuda.is_available():
        device = f"cuda:{shard.local_rank % torch.cuda.device_count()}"  # one GPU per process
    editor = Editor.from_file(checkpoint, device=device, dtype=dtype_named(args.dtype))
    editor.progress = False  # the batch's own bar, not one per edit
    for lora, strength in loras:
        editor.apply_lora(lora, strength)
    editor.enable_compile(args.compile)  # one compile per processing size and batch size
    options = BatchOptions(
        out_dir=out_dir,
        defaults=defaults,
        default_names=names,
        batch_size=args.batch_size,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        resize_mask=args.resize_mask,
        progress=not args.no_progress,
        fingerprint=fingerprint,
    )
    summary = run_batch(editor, jobs, options, problems, shard)
    who = f"batch rank {shard.rank}/{shard.world}" if shard.sharded else "batch"
    print(f"{who}: {summary.line()}; results in {out_dir}", flush=True)
    if summary.stopped_by:
        return EXIT_SIGNAL.get(summary.stopped_by, 130)
    return 0 if summary.all_done else EXIT_FAILED
