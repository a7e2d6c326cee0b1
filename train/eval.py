"""Quality benchmarks.

``python -m train.eval synthetic --checkpoint CKPT`` runs the editor on held-out synthetic edit
cases (``train.synthetic``, never seen in training) at several similarity scales and reports
exemplar fidelity (colour error, shape agreement), background preservation outside the feather
band, and the response to the scale. It writes ``report.json`` and ``chart.png``.

``python -m train.eval pool REPORT...`` merges the reports of several such runs of one checkpoint
on different synthetic worlds (``--world-seed``) into one verdict over all their cases, for a
model whose margin one world's cases cannot settle (docs/miniature-world.md, "Quality benchmark").

``python -m train.eval folder`` scores a folder of results COCOEE-style: CLIP score between each
generated box and its exemplar with any open_clip model, and FID with feature weights you provide.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from exemplar_core.files import atomic_write_text
from exemplar_core.image_io import save_image, to_uint8
from exemplar_core.masks import mask_box

from . import metrics, synthetic

DEFAULT_SCALES = (0.0, 1.0, 3.0, 5.0, 7.0)
# Held-out cases per run: enough to bring the standard error of a mean change to about the 0.01
# tolerance of "not getting worse" (docs/miniature-world.md, "Quality benchmark").
DEFAULT_CASES = 96


def _to_tensor(image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def edit_case(editor, case: dict, settings) -> tuple[np.ndarray, metrics.Fidelity]:
    """Edit one synthetic case (``synthetic.make_eval_case``) with ``settings``: the result as
    uint8 and its fidelity to the exemplar's object (``metrics.synthetic_fidelity``)."""
    result = editor.edit(
        _to_tensor(case["source"]),
        _to_tensor(case["mask"])[:, :1],
        _to_tensor(case["exemplar"]),
        settings,
    ).image
    res8 = to_uint8(result)
    fid = metrics.synthetic_fidelity(
        res8,
        np.asarray(case["exemplar"]),
        tuple(case["box"]),
        exemplar_mask=np.asarray(case["exemplar_mask"]) > 127,
    )
    return res8, fid


def run_synthetic(
    checkpoint: str,
    cases: int = DEFAULT_CASES,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    steps: int = 20,
    scheduler: str = "ddim",
    seed: int = 0,
    world_seed: int = 0,
    feather: int = 4,
    device: str | None = None,
) -> dict:
    """Edit ``cases`` held-out synthetic scenes at each scale; return the report as a dict."""
    from exemplar_core import crop
    from exemplar_core.editor import Editor, EditSettings

    if cases < 1 or steps < 1 or not scales:
        raise ValueError(
            f"the benchmark needs at least 1 case, 1 step and 1 scale, got cases={cases}, "
            f"steps={steps}, scales={list(scales)}"
        )
    editor = Editor.from_file(checkpoint, device=device)
    editor.progress = False
    size = editor.native_size
    per_scale: dict[str, dict] = {}
    samples = []
    started = time.perf_counter()
    for scale in scales:
        colour, shape, fore, psnrs = [], [], [], []
        for i in range(cases):
            case = synthetic.make_eval_case(i, world_seed, size)
            settings = EditSettings(
                steps=steps, similarity=scale, seed=seed + i, scheduler=scheduler, feather=feather
            )
            res8, fid = edit_case(editor, case, settings)
            src8 = to_uint8(_to_tensor(case["source"]))
            edit_mask = _to_tensor(case["mask"])[:, :1]
            band = crop.feather_alpha((edit_mask >= 0.5).float(), feather)[0, 0].numpy() > 0
            colour.append(fid.color_error)
            shape.append(fid.shape_iou)
            fore.append(fid.foreground_fraction)
            psnrs.append(metrics.psnr(res8, src8, ~band))
            if i < 4:
                samples.append((scale, i, res8))
        per_scale[f"{scale:g}"] = {
            "color_error": float(np.mean(colour)),
            "color_error_se": _standard_error(colour),
            "color_error_per_case": [round(float(c), 5) for c in colour],
            "shape_iou": float(np.mean(shape)),
            "foreground_fraction": float(np.mean(fore)),
            "background_psnr_min": float(min(psnrs)),
        }
    report = {
        "checkpoint": str(checkpoint),
        "cases": cases,
        "world_seed": world_seed,
        "seed": seed,
        "steps": steps,
        "scheduler": scheduler,
        "resolution": size,
        "seconds": round(time.perf_counter() - started, 1),
        "scales": per_scale,
    }
    report["hole_fill"] = hole_fill_probe(editor, steps, scheduler, seed, feather)
    report["checks"] = check_requirements(per_scale)
    report["_samples"] = samples
    return report


# Plain scene colours of the hole-fill probe (RGB 0..255): light, dark, saturated and muted.
PROBE_COLOURS = (
    (170, 140, 110),
    (120, 90, 170),
    (120, 150, 100),
    (80, 120, 170),
    (200, 200, 200),
    (60, 60, 60),
    (210, 90, 80),
    (230, 200, 90),
)


def hole_fill_probe(
    editor, steps: int = 20, scheduler: str = "ddim", seed: int = 0, feather: int = 4
) -> dict:
    """How well the model carries the scene's colour into the hole: plain, lightly noisy scenes
    with a central hole of half the side, edited at s = 0 (the learned unconditional vector, no
    exemplar). Returns the mean and worst RGB distance (0..1 units, as the colour error) between
    the hole's mean colour, inside the feather band, and the scene's colour.

    It catches a model that reads the scene's colour from the noisy latent instead of the masked
    image (docs/miniature-world.md, "The box's background")."""
    from exemplar_core.editor import EditSettings

    size = editor.native_size
    quarter = size // 4
    mask = torch.zeros(1, 1, size, size)
    mask[..., quarter : size - quarter, quarter : size - quarter] = 1.0
    shrink = min(feather + 2, size // 8)  # stay clear of the feather band, keep some pixels
    inner = slice(quarter + shrink, size - quarter - shrink)
    exemplar = torch.full((1, 3, 32, 32), metrics.EXEMPLAR_BACKGROUND[0] / 255)  # unused at s = 0
    errors = []
    for i, colour in enumerate(PROBE_COLOURS):
        generator = torch.Generator().manual_seed(seed + i)
        scene = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 255
        noise = (torch.rand(1, 3, size, size, generator=generator) - 0.5) * (16 / 255)
        source = (scene + noise).clamp(0, 1)
        settings = EditSettings(
            steps=steps, similarity=0.0, seed=seed + i, scheduler=scheduler, feather=feather
        )
        result = editor.edit(source, mask, exemplar, settings).image
        filled = result[0, :, inner, inner].mean(dim=(1, 2))
        errors.append(float(torch.linalg.vector_norm(filled - scene.view(3))))
    return {"colour_error": float(np.mean(errors)), "worst": float(max(errors))}


def _standard_error(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def check_requirements(per_scale: dict[str, dict]) -> dict[str, dict]:
    """The targets: colour error at s=5 at most half that at s=0; fidelity not worse from
    0 to 5; background PSNR >= 45 dB outside the feather band.

    The verdicts use the means. Where the rows carry per-case errors (``run_synthetic``'s do),
    each check also reports the standard error of what it compares, paired over the same cases,
    so a verdict within the noise can be seen as such."""
    checks: dict[str, dict] = {}
    if "0" in per_scale and "5" in per_scale:
        c0, c5 = per_scale["0"]["color_error"], per_scale["5"]["color_error"]
        halved = {"passed": c5 <= 0.5 * c0, "s0": c0, "s5": c5, "ratio": c5 / c0 if c0 else None}
        checks["color_error_halved_at_5"] = halved
        ordered = [k for k in per_scale if 0 <= float(k) <= 5]
        ordered.sort(key=float)
        errors = [per_scale[k]["color_error"] for k in ordered]
        # "not getting worse": each step's error at most 0.01 above the previous one
        monotone = all(b <= a + 0.01 for a, b in zip(errors, errors[1:], strict=False))
        checks["fidelity_not_worse_0_to_5"] = {"passed": monotone, "color_errors": errors}
        per_case = [per_scale[k].get("color_error_per_case") for k in ordered]
        if all(p is not None and len(p) == len(per_case[0]) > 1 for p in per_case):
            rises = [np.subtract(b, a) for a, b in zip(per_case, per_case[1:], strict=False)]
            checks["fidelity_not_worse_0_to_5"]["rises"] = [
                {"from": a, "to": b, "mean": float(r.mean()), "se": _standard_error(r)}
                for a, b, r in zip(ordered[:-1], ordered[1:], rises, strict=True)
            ]
            # the ratio's standard error by the delta method, paired over the cases
            x0, x5 = np.asarray(per_case[0]), np.asarray(per_case[ordered.index("5")])
            if c0:
                halved["ratio_se"] = _standard_error((x5 - (c5 / c0) * x0) / c0)
    worst = min(v["background_psnr_min"] for v in per_scale.values())
    checks["background_psnr_ge_45"] = {"passed": worst >= 45.0, "worst_db": worst}
    return checks


# What must agree between reports for their cases to be pooled.
_POOL_SETTINGS = ("checkpoint", "steps", "scheduler", "resolution", "seed")
# What each scale's row must carry to be pooled.
_POOL_ROW = ("shape_iou", "foreground_fraction", "background_psnr_min")


def pool_reports(reports: list[dict], names: list[str] | None = None) -> dict:
    """One report over the cases of several ``run_synthetic`` reports of the same checkpoint and
    sampling settings, each on its own synthetic world. Each scale's means are taken over all the
    cases (so a world of more cases weighs more), and the checks are those of ``check_requirements``
    on the pooled per-case errors. Only the scales every report has are pooled."""
    names = names or [f"report {i + 1}" for i in range(len(reports))]
    if len(reports) < 2:
        raise ValueError(f"pooling needs at least 2 reports, got {len(reports)}")
    first = reports[0]
    for name, report in zip(names, reports, strict=True):
        missing = [k for k in (*_POOL_SETTINGS, "world_seed", "scales") if k not in report]
        if missing:
            raise ValueError(
                f"{name} is not a report of 'python -m train.eval synthetic' (no {missing})"
            )
        for key in _POOL_SETTINGS:
            if report[key] != first[key]:
                raise ValueError(
                    f"{name} has {key} {report[key]!r} but {names[0]} has {first[key]!r}; only "
                    f"runs of one checkpoint with the same sampling settings can be pooled"
                )
        if not isinstance(report["scales"], dict):
            raise ValueError(f"{name}: 'scales' must map each scale to its row")
        for key, row in report["scales"].items():
            if not isinstance(row, dict) or not row.get("color_error_per_case"):
                raise ValueError(
                    f"{name} has no per-case colour errors at s = {key} (a report written "
                    f"before they were recorded); run the benchmark again"
                )
            absent = [k for k in _POOL_ROW if k not in row]
            if absent:
                raise ValueError(f"{name} lacks {absent} at s = {key}; run the benchmark again")
    worlds = [r["world_seed"] for r in reports]
    repeated = sorted({w for w in worlds if worlds.count(w) > 1})
    if repeated:
        raise ValueError(
            f"world seed(s) {repeated} appear in more than one report: the same cases would be "
            f"counted twice; pool reports of different --world-seed values"
        )
    scales = [k for k in first["scales"] if all(k in r["scales"] for r in reports)]
    if not scales:
        raise ValueError("the reports share no similarity scale")
    pooled: dict[str, dict] = {}
    for key in scales:
        rows = [r["scales"][key] for r in reports]
        colour = [c for row in rows for c in row["color_error_per_case"]]
        weights = [len(row["color_error_per_case"]) for row in rows]
        pooled[key] = {
            "color_error": float(np.mean(colour)),
            "color_error_se": _standard_error(colour),
            "color_error_per_case": colour,
            "shape_iou": float(np.average([row["shape_iou"] for row in rows], weights=weights)),
            "foreground_fraction": float(
                np.average([row["foreground_fraction"] for row in rows], weights=weights)
            ),
            "background_psnr_min": min(row["background_psnr_min"] for row in rows),
        }
    report = {key: first[key] for key in _POOL_SETTINGS}
    report.update(
        pooled_from=list(names),
        world_seeds=worlds,
        cases=len(pooled[scales[0]]["color_error_per_case"]),
        scales=pooled,
        per_world={
            f"{r['world_seed']}": {k: r["scales"][k]["color_error"] for k in scales}
            for r in reports
        },
    )
    if "hole_fill" in first:  # the same probe for every report of these settings
        report["hole_fill"] = first["hole_fill"]
    report["checks"] = check_requirements(pooled)
    return report


def draw_chart(report: dict, path: Path) -> None:
    """A small line chart (colour error and shape IoU against the scale) plus sample edits."""
    from PIL import Image, ImageDraw

    scales = [float(k) for k in report["scales"]]
    colour = [v["color_error"] for v in report["scales"].values()]
    shape = [v["shape_iou"] for v in report["scales"].values()]
    width, height, pad = 520, 300, 40
    samples = report.get("_samples", [])
    thumb = 64
    rows = sorted({i for _, i, _ in samples})
    sheet_h = len(rows) * thumb
    image = Image.new("RGB", (max(width, thumb * len(scales)), height + sheet_h + 20), "white")
    draw = ImageDraw.Draw(image)
    x_max = max(scales) or 1.0
    y_max = max(max(colour), 1.0)

    def point(s: float, v: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * s / x_max, height - pad - (height - 2 * pad) * v / y_max

    draw.line([point(0, 0), point(x_max, 0)], fill="black")
    draw.line([point(0, 0), point(0, y_max)], fill="black")
    for series, colour_name, label in (
        (colour, "red", "colour error"),
        (shape, "blue", "shape IoU"),
    ):
        pts = [point(s, v) for s, v in zip(scales, series, strict=True)]
        draw.line(pts, fill=colour_name, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour_name)
        draw.text((pts[-1][0] - 60, pts[-1][1] - 14), label, fill=colour_name)
    for s in scales:
        x, y = point(s, 0)
        draw.text((x - 4, y + 4), f"{s:g}", fill="black")
    title = "similarity scale s ->  (lower colour error, higher IoU = closer to the exemplar)"
    draw.text((pad, 8), title, fill="black")
    for scale, i, array in samples:
        col = scales.index(scale)
        tile = Image.fromarray(array).resize((thumb, thumb))
        image.paste(tile, (col * thumb, height + 20 + rows.index(i) * thumb))
    save_image(image, Path(path), overwrite=True)


def _cmd_synthetic(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "chart.png"):
        if (out / name).exists() and not args.overwrite:
            raise SystemExit(f"error: {out / name} exists; pass --overwrite or another --out")
    try:
        scales = tuple(float(s) for s in args.scales.split(","))
    except ValueError:
        raise ValueError(
            f"--scales takes numbers separated by commas, got {args.scales!r}"
        ) from None
    report = run_synthetic(
        args.checkpoint,
        args.cases,
        scales,
        args.steps,
        args.scheduler,
        args.seed,
        args.world_seed,
        args.feather,
        None if args.device == "auto" else args.device,
    )
    draw_chart(report, out / "chart.png")
    report.pop("_samples")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    print(f"{report['cases']} held-out cases (world seed {report['world_seed']})")
    _print_results(report)
    print(f"wrote {out / 'report.json'} and {out / 'chart.png'} ({report['seconds']} s)")
    return _exit_code(report, args.strict)


def _exit_code(report: dict, strict: bool) -> int:
    """1 when a target is missed and ``--strict`` asks for it, else 0."""
    return 1 if strict and not all(c["passed"] for c in report["checks"].values()) else 0


def _print_results(report: dict) -> None:
    """The per-scale table, the hole fill where measured, and each check with its noise."""
    print(f"{'s':>4} {'colour err':>10} {'+-':>6} {'shape IoU':>9} {'bg PSNR':>8}")
    for key, row in report["scales"].items():
        bg = row["background_psnr_min"]
        print(
            f"{key:>4} {row['color_error']:>10.3f} {row['color_error_se']:>6.3f} "
            f"{row['shape_iou']:>9.3f} {'inf' if math.isinf(bg) else f'{bg:.1f}':>8}"
        )
    fill = report.get("hole_fill")
    if fill:
        print(
            f"hole fill (plain scenes, s = 0): colour error {fill['colour_error']:.3f}, "
            f"worst {fill['worst']:.3f}"
        )
    for name, check in report["checks"].items():
        detail = ""
        if check.get("ratio_se") is not None:
            detail = f": s=5 / s=0 = {check['ratio']:.3f} +- {check['ratio_se']:.3f} (<= 0.5)"
        elif "rises" in check:
            steps = ", ".join(
                f"{r['from']}->{r['to']} {r['mean']:+.3f} +- {r['se']:.3f}" for r in check["rises"]
            )
            detail = f": {steps} (each <= +0.01)"
        print(f"{'PASS' if check['passed'] else 'FAIL'} {name}{detail}")


def _cmd_pool(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and any(out.resolve() == Path(r).resolve() for r in args.reports):
        raise SystemExit(f"error: --out {out} is one of the reports being pooled; pick another")
    if out is not None and out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite or another --out")
    reports = []
    for name in args.reports:
        try:
            reports.append(json.loads(Path(name).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read report {name}: {exc}") from None
        if not isinstance(reports[-1], dict):
            raise ValueError(f"{name} is not a report of 'python -m train.eval synthetic'")
    report = pool_reports(reports, list(args.reports))
    worlds = ", ".join(str(w) for w in report["world_seeds"])
    print(f"{report['cases']} held-out cases pooled from {len(reports)} worlds (seeds {worlds})")
    for world, errors in report["per_world"].items():
        row = "  ".join(f"s={k} {v:.3f}" for k, v in errors.items())
        print(f"  world {world}: colour error {row}")
    _print_results(report)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2))
        print(f"wrote {out}")
    return _exit_code(report, args.strict)


def _load_folder_images(folder: Path, suffix: str) -> dict[str, np.ndarray]:
    from PIL import Image

    images = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        images[path.name[: -len(suffix)]] = np.asarray(Image.open(path).convert("RGB"))
    return images


def _cmd_folder(args: argparse.Namespace) -> int:
    """COCOEE-style: results/{id}.png, exemplars/{id}_ref.png, masks/{id}_mask.png (white box).
    The exemplars and masks default to the folders ``batch --cocoee`` writes inside the results'."""
    import open_clip

    from exemplar_core.batch.cocoee import EXEMPLARS_FOLDER, MASKS_FOLDER

    results = _load_folder_images(Path(args.results), args.result_suffix)
    exemplar_folder = Path(args.exemplars or Path(args.results, EXEMPLARS_FOLDER))
    refs = _load_folder_images(exemplar_folder, args.exemplar_suffix)
    masks = _load_folder_images(
        Path(args.masks or Path(args.results, MASKS_FOLDER)), args.mask_suffix
    )
    ids = sorted(set(results) & set(refs) & set(masks))
    if not ids:
        raise SystemExit("error: no id has a result, an exemplar and a mask; check the suffixes")
    report: dict = {"images": len(ids)}
    if args.clip_model:
        if not args.clip_weights:
            raise SystemExit("error: --clip-weights FILE is required (nothing is downloaded)")
        model, _, preprocess = open_clip.create_model_and_transforms(
            args.clip_model, pretrained=args.clip_weights
        )
        model.eval()
        from PIL import Image

        boxes, exemplars = [], []
        for key in ids:
            box = mask_box(torch.tensor(masks[key][..., 0]), threshold=128)  # > 127 of 255
            if box is None:
                continue
            x0, y0, x1, y1 = box
            crop = results[key][y0:y1, x0:x1]
            boxes.append(preprocess(Image.fromarray(crop)))
            exemplars.append(preprocess(Image.fromarray(refs[key])))
        report["clip_score"] = metrics.clip_score(model.encode_image, boxes, exemplars)
    if args.fid_weights:
        import torchvision

        if not args.reference:
            raise SystemExit("error: FID needs --reference FOLDER of real images")
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(args.fid_weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.fc = torch.nn.Identity()
        net.eval()

        def batches(images):
            """[<=16, 3, 299, 299] in -1..1, made as the images are read: the reference (COCO
            test2017 at 512 px) is 40,670 images, far more than memory holds at once."""
            chunk = []
            for a in images:
                chunk.append(
                    torch.nn.functional.interpolate(
                        torch.tensor(a).permute(2, 0, 1)[None].float() / 255,
                        size=(299, 299),
                        mode="bilinear",
                        align_corners=False,
                    )
                )
                if len(chunk) == 16:
                    yield torch.cat(chunk) * 2 - 1
                    chunk = []
            if chunk:
                yield torch.cat(chunk) * 2 - 1

        def reference_images():
            from PIL import Image

            for path in sorted(Path(args.reference).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    yield np.asarray(Image.open(path).convert("RGB"))

        generated = batches(results[k] for k in ids)
        report["fid"] = metrics.fid(net, generated, batches(reference_images()))
    print(json.dumps(report, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
    return 0


def _verdict_options(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` and ``--strict``, the same for the commands that write a verdict."""
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.eval", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synthetic", help="exemplar fidelity vs similarity scale on synthetic cases")
    s.add_argument("--checkpoint", required=True)
    s.add_argument(
        "--cases", type=int, default=DEFAULT_CASES, help=f"held-out cases ({DEFAULT_CASES})"
    )
    s.add_argument("--scales", default=",".join(f"{x:g}" for x in DEFAULT_SCALES))
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--scheduler", default="ddim")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--world-seed", type=int, default=0, help="the synthetic world's seed")
    s.add_argument("--feather", type=int, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default="out/eval", help="folder for report.json and chart.png")
    _verdict_options(s)
    s.set_defaults(func=_cmd_synthetic)
    q = sub.add_parser(
        "pool", help="one verdict over the cases of several synthetic reports (other worlds)"
    )
    q.add_argument("reports", nargs="+", help="report.json files of one checkpoint")
    q.add_argument("--out", help="write the pooled report (JSON) here")
    _verdict_options(q)
    q.set_defaults(func=_cmd_pool)
    f = sub.add_parser("folder", help="COCOEE-style CLIP score and FID on a folder of results")
    f.add_argument("--results", required=True)
    f.add_argument("--exemplars", help="folder of {id}_ref.png (default: RESULTS/exemplars)")
    f.add_argument("--masks", help="folder of {id}_mask.png (default: RESULTS/masks)")
    f.add_argument("--result-suffix", default=".png")
    f.add_argument("--exemplar-suffix", default="_ref.png")
    f.add_argument("--mask-suffix", default="_mask.png")
    f.add_argument("--clip-model", help="open_clip model name, e.g. ViT-B-32")
    f.add_argument("--clip-weights", help="path to that model's weights file")
    f.add_argument("--fid-weights", help="torchvision InceptionV3 state dict file")
    f.add_argument("--reference", help="folder of real images for FID")
    f.add_argument("--out", help="write the JSON report here too")
    f.set_defaults(func=_cmd_folder)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
