"""Trainer configuration: TOML file + ``--set section.key=value`` overrides -> typed dataclasses.

Every option carries its documentation (``help`` metadata); ``python -m train --print-config``
prints the resolved configuration as commented TOML. Defaults are the official code's
(``configs/v1.yaml``, ``ldm/data/open-images.py``) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the training extra's tomli (train/preflight.py)
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


class ConfigError(ValueError):
    """The training configuration is invalid."""


def opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best in the declarations
    """A documented config field."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


InitKind = Literal["sd", "sd_inpaint", "pbe", "random"]
DataFormat = Literal["coco", "openimages", "jsonl"]
Precision = Literal["no", "bf16", "fp16"]
DropoutMode = Literal["per_sample", "per_batch"]
OptimizerName = Literal["adamw", "adamw8bit", "adafactor"]  # built by train/optim.py


@dataclass
class ModelSection:
    init: InitKind = opt(
        "sd",
        "start point: 'sd' (SD 1.x, 5 zero-initialised extra input channels), 'sd_inpaint' (SD "
        "inpainting, conv_in reordered to [x, masked latent, keep] with the mask polarity folded "
        "into the weights), 'pbe' (fine-tune a Paint-by-Example checkpoint), 'random' (random "
        "weights of `architecture`: smoke tests only)",
    )
    path: str = opt(
        "", "checkpoint to start from: diffusers folder or single .safetensors/.ckpt file"
    )
    clip: str = opt(
        "",
        "CLIP vision weights for the frozen tower (init sd / sd_inpaint; optional for random, "
        "e.g. the miniature world's tower from `python -m train.tower`): an open_clip pretrained "
        "file (visual.* keys), a transformers CLIPVisionModel file or a tower.* file; never "
        "downloaded",
    )
    encoder: dict = opt(
        {},
        "exemplar encoder architecture overrides (EncoderConfig fields, e.g. backbone = "
        "'ViT-L-14-quickgelu'); default: the published encoder. out_dim follows the UNet",
    )
    unet: dict = opt(
        {},
        "diffusers UNet config overrides: for an LDM single file, whose head count cannot be "
        "read from the weights (SD 1.x: attention_head_dim = 8, the default); for init = "
        "'random', changes to the architecture's UNet (e.g. block_out_channels = [128, 256])",
    )
    architecture: Literal["published", "tiny", "mini"] = opt(
        "published",
        "architecture for init = 'random': published, tiny (the tests' model) or mini (the "
        "miniature world's 64 px model, docs/miniature-world.md)",
    )
    vae: str = opt(
        "",
        "init = 'random': start the (frozen) VAE from this file written by `python -m train.vae` "
        "(its config replaces the architecture's VAE config)",
    )


@dataclass
class DataSection:
    format: DataFormat = opt("openimages", "annotation format: 'coco', 'openimages' or 'jsonl'")
    path: str = opt(
        "",
        "annotation file: COCO instances JSON, OpenImages box CSV, or JSONL lines "
        '{"image": path, "boxes": [[x0, y0, x1, y1], ...]} (pixels; or "mask": path)',
    )
    image_root: str = opt(
        "", "folder image paths are relative to (default: the annotation file's folder)"
    )
    classes: list = opt(
        [], "keep only boxes of these classes (COCO category names or ids, OpenImages LabelName)"
    )
    min_area: float = opt(0.02, "smallest box area kept, as a share of the image area")
    max_area: float = opt(0.8, "largest box area kept, as a share of the image area")
    skip_images: list = opt([], "image ids / file stems to skip (the official code skipped 7)")
    skip_crowd: bool = opt(True, "COCO: drop iscrowd boxes (groups, not single objects)")
    resolution: int = opt(512, "training resolution (square)")
    box_expansion: float = opt(
        0.4,
        "each mask side is pushed out by up to this share of free space (the Mask Bezier Jitter "
        "node's box_expansion; the old name extend_share is still read, with a warning)",
    )
    bezier_p: float = opt(0.5, "probability of the Bezier mask (else the extended rectangle)")
    bezier_jitter: int = opt(5, "integer pixel jitter of each Bezier point")
    bezier_dedupe_quirk: bool = opt(
        True, "reproduce the official point dedupe (irregular shape); false = all 18 points/side"
    )
    zoom_share: float = opt(0.6, "random zoom-in of the square crop, share of free space")
    antialias: bool = opt(False, "antialiased resizes (the official code had none)")
    ref_pad: int = opt(10, "reference crop padding around the box, px")
    hflip_p: float = opt(0.5, "reference horizontal flip probability")
    rotate_p: float = opt(0.5, "reference rotation probability")
    rotate_limit: float = opt(20.0, "reference rotation range, +- degrees")
    blur_p: float = opt(0.3, "reference box-blur probability (kernel 3, 5 or 7)")
    warp_p: float = opt(0.3, "reference 3-point affine warp probability (albumentations 0.4.3)")
    warp_shift: float = opt(50.0, "warp anchor jitter, px at 224 (scaled with the encoder size)")
    val_count: int = opt(4, "images held out of training for validation images")
    num_workers: int = opt(4, "DataLoader worker processes per rank (0 = in the main process)")
    variants: int = opt(
        0,
        "examples per image: 0 = fresh random crop, mask and reference augmentation every epoch "
        "(the official recipe); K = epoch e repeats the examples of epoch e mod K, so that "
        "data.cache can reuse what the frozen VAE and CLIP tower computed (docs/training.md, "
        "'Caching')",
    )
    cache: Literal["off", "device", "cpu"] = opt(
        "off",
        "keep the frozen parts' outputs (VAE posteriors, latent keep mask, pooled tower output) "
        "of each example and reuse them when the example comes back (needs data.variants > 0): "
        "'device' (the training device's memory), 'cpu' (RAM) or 'off'",
    )
    cache_max_gb: float = opt(
        8.0, "refuse to run when data.cache would grow past this many GiB (per process)"
    )


@dataclass
class TrainSection:
    batch_size: int = opt(4, "samples per process per micro-batch (official: 4 per GPU)")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    epochs: int = opt(40, "epochs (one random box per image per epoch); used when max_steps = 0")
    max_steps: int = opt(0, "optimiser steps to run; 0 = derive from epochs")
    optimizer: OptimizerName = opt(
        "adamw",
        "'adamw' (torch, fp32 moments: 8 bytes per trained parameter; official), 'adamw8bit' "
        "(bitsandbytes' 8-bit AdamW: about 2 bytes per parameter) or 'adafactor' (torch: "
        "factored second moment, no first moment; lr is a relative step, docs/training.md "
        "'Memory')",
    )
    lr: float = opt(
        1e-5,
        "AdamW learning rate (not scaled by batch or GPUs, as the official); for adafactor a "
        "step relative to each weight's RMS (try 1e-4 .. 3e-4, docs/training.md 'Memory')",
    )
    betas: list = opt([0.9, 0.999], "AdamW betas (adamw, adamw8bit; adafactor has none)")
    weight_decay: float = opt(0.01, "decoupled weight decay (torch AdamW default; every optimiser)")
    adam_eps: float = opt(1e-8, "AdamW epsilon (adamw, adamw8bit; adafactor uses its own)")
    warmup_steps: int = opt(10000, "linear warm-up steps (LambdaLinearScheduler)")
    warmup_start: float = opt(1e-6, "lr factor at step 0 of the warm-up (rises linearly to 1)")
    lr_decay: Literal["none", "linear", "cosine"] = opt(
        "none",
        "learning-rate decay at the end of the run: 'none' (constant after the warm-up, official), "
        "'linear' or 'cosine' down to lr_end over the last lr_decay_steps steps",
    )
    lr_decay_steps: int = opt(0, "length of the decay phase, steps; 0 = every step after warm-up")
    lr_end: float = opt(0.0, "lr factor reached at the last step of the decay (0..1)")
    max_grad_norm: float = opt(0.0, "clip the gradient norm to this; 0 = no clipping (official)")
    mixed_precision: Precision = opt("no", "'no' (fp32, official), 'bf16' or 'fp16' autocast")
    gradient_checkpointing: bool = opt(True, "UNet gradient checkpointing (official: on)")
    cond_dropout: float = opt(0.2, "probability of replacing the condition by the learned vector")
    cond_dropout_mode: DropoutMode = opt(
        "per_sample", "'per_sample' (default) or 'per_batch' (the official code's behaviour)"
    )
    timestep_bias: Literal["none", "later", "earlier"] = opt(
        "none",
        "timestep sampling: 'none' (uniform, official); 'later' / 'earlier' multiply the sampling "
        "weight of the noisiest / least noisy `timestep_bias_portion` of the timesteps by "
        "`timestep_bias_multiplier` (as diffusers' SDXL script). 'later' trains more where the "
        "exemplar decides colour and layout (the miniature world uses it)",
    )
    timestep_bias_multiplier: float = opt(2.0, "weight of the biased timesteps (> 0)")
    timestep_bias_portion: float = opt(0.25, "share of the timesteps that get the bias (0..1)")
    min_snr_gamma: float = opt(0.0, "min-SNR loss weighting gamma (5 is typical); 0 = plain MSE")
    noise_offset: float = opt(
        0.0,
        "offset noise (as diffusers' scripts): add this times a per-sample, per-channel constant "
        "to the training noise, so the model reads an area's overall colour from the context "
        "instead of from what the noisy latent still holds of it; 0 = off (official)",
    )
    masked_loss_weight: float = opt(
        1.0,
        "loss weight of the latent positions being repainted, relative to the kept ones (the "
        "loss stays a weighted mean); 1 = plain MSE over the whole latent (official)",
    )
    ema: bool = opt(True, "keep an EMA of the trained weights (used for validation and export)")
    ema_decay: float = opt(
        0.9999, "EMA decay per optimiser step (warmed up as min(decay, (1 + n) / (10 + n)))"
    )
    ema_device: Literal["auto", "cpu"] = opt(
        "auto",
        "where the EMA's fp32 shadow weights live: 'auto' (the parameters' device) or 'cpu' "
        "(saves the GPU a full fp32 copy of the trained weights; each update copies them over)",
    )
    ema_every: int = opt(
        1,
        "update the EMA every N optimiser steps, with the decays of the N steps multiplied "
        "(decay**N after the warm-up), so its time constant in steps is unchanged",
    )
    seed: int = opt(23, "seed for model init, data order, augmentation, noise (official: 23)")
    checkpoint_every: int = opt(2000, "save a resumable checkpoint every N optimiser steps")
    keep_checkpoints: int = opt(2, "resumable checkpoints kept (older ones are deleted)")
    export_dtype: Literal["fp32", "fp16", "bf16"] = opt(
        "fp16", "dtype of exported model files (EMA weights when ema = true)"
    )
    log_every: int = opt(10, "TensorBoard scalars every N optimiser steps")
    validate_every: int = opt(1000, "validation images every N optimiser steps; 0 = only at end")
    val_steps: int = opt(30, "sampling steps for validation images")
    val_similarity: float = opt(5.0, "similarity (guidance) scale s for validation images")
    val_scheduler: str = opt("pndm", "scheduler for validation images (pndm, ddim, dpmpp_2m, ...)")
    allow_tf32: bool = opt(True, "allow TF32 matmuls on Ampere+ GPUs")
    cudnn_benchmark: bool = opt(
        False,
        "let cuDNN time its convolution algorithms for the (fixed) training shapes and keep the "
        "fastest (GPU); runs are then not bit-reproducible",
    )
    channels_last: bool = opt(
        False,
        "UNet and VAE weights in channels-last memory format; measured slower for training on an "
        "H200 (docs/training.md, 'Speed on a GPU')",
    )
    compile: bool = opt(
        False,
        "torch.compile the UNet in place (state-dict keys unchanged); the first steps pay the "
        "compile time, so it pays only in long runs (docs/training.md, 'Speed on a GPU')",
    )
    fused_optimizer: bool = opt(
        False,
        "AdamW's fused implementation (torch's fused=True): the whole optimiser step in a few "
        "kernels instead of several per tensor group; the update equals the default one to float "
        "rounding, not bit for bit (train.optimizer = 'adamw' only)",
    )
    method: Literal["auto", "full", "lora"] = opt(
        "auto",
        "what is trained: 'full' (every UNet weight and the exemplar head), 'lora' (peft LoRA "
        "adapters, configured in [lora]; the base stays frozen) or 'auto' (LoRA in subject mode, "
        "full fine-tuning otherwise)",
    )
    cpu: bool = opt(False, "force CPU even when a GPU is present")
    dist_timeout: int = opt(
        60, "minutes a process waits for the others (validation, checkpoints, prior samples)"
    )


@dataclass
class SubjectSection:
    enabled: bool = opt(False, "subject mode: fine-tune on a few photos of one subject")
    format: DataFormat = opt("jsonl", "subject annotation format (jsonl with boxes or masks)")
    path: str = opt("", "subject annotations (3-10 photos of one subject)")
    image_root: str = opt("", "folder the subject image paths are relative to")
    repeats: int = opt(100, "times the subject photos are repeated per epoch")
    class_exemplars: str = opt("", "folder of class exemplar images for the prior samples")
    class_data_format: DataFormat = opt("coco", "format of a box dataset to crop class exemplars")
    class_data: str = opt("", "box dataset to crop class exemplars from (instead of a folder)")
    class_image_root: str = opt("", "image folder of class_data")
    class_names: list = opt([], "classes to crop from class_data (e.g. ['dog'])")
    num_prior: int = opt(200, "prior samples generated by the frozen model before training")
    prior_weight: float = opt(1.0, "lambda: loss = subject loss + lambda * prior loss")
    prior_dir: str = opt("", "where prior samples are stored/reused (default: out_dir/prior)")
    prior_steps: int = opt(50, "sampling steps for prior generation")
    prior_similarity: float = opt(5.0, "similarity (guidance) scale s for prior generation")
    prior_scheduler: str = opt("pndm", "scheduler for prior generation")


@dataclass
class LoraSection:
    rank: int = opt(16, "LoRA rank r of every adapter (UNet and, with exemplar = 'lora', mapper)")
    alpha: float = opt(
        16.0, "LoRA alpha: the update is (alpha / rank) * up @ down (alpha = rank: scale 1)"
    )
    dropout: float = opt(0.0, "dropout on the adapters' input during training (0..1, 0 = off)")
    unet_modules: list = opt(
        ["attention"],
        "UNet layer groups that get adapters: 'attention' (to_q, to_k, to_v, to_out of self- "
        "and cross-attention), 'feed_forward' (the transformer blocks' ff.net), 'projections' "
        "(proj_in/proj_out around each transformer), 'conv' (ResNet convolutions, down- and "
        "upsamplers), 'conv_in' (the 9-channel input convolution)",
    )
    exemplar: Literal["lora", "full", "frozen"] = opt(
        "lora",
        "the exemplar side after the frozen CLIP tower: 'lora' (LoRA on the mapper's linear "
        "layers; final_ln, proj_out and learnable_vector trained whole), 'full' (mapper, "
        "final_ln, proj_out and learnable_vector trained whole) or 'frozen' (nothing trained); "
        "whole-trained parts are stored in the LoRA file as differences to the base",
    )
    init: Literal["kaiming", "gaussian"] = opt(
        "kaiming",
        "adapter start: down (A) kaiming-uniform (peft's default) or gaussian (std 1/rank); up (B) "
        "is zero either way, so training starts from the unchanged base model",
    )
    export_dtype: Literal["fp32", "fp16", "bf16"] = opt(
        "fp16", "dtype of the LoRA files models/pbe-lora-*.safetensors (alpha stays fp32)"
    )
    export_merged: bool = opt(
        False,
        "also write the base model with the LoRA merged in, as a single-file model "
        "models/pbe-*.safetensors (train.export_dtype), next to each LoRA file",
    )


@dataclass
class TrainConfig:
    out_dir: str = opt("runs/pbe", "output folder: checkpoints/, models/, validation/, logs/")
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    subject: SubjectSection = field(default_factory=SubjectSection)
    lora: LoraSection = field(default_factory=LoraSection)

    @property
    def method(self) -> str:
        """What is trained: 'full' or 'lora' (``train.method``, with 'auto' resolved)."""
        return resolved_method(self.train.method, self.subject.enabled)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "train": TrainSection,
    "subject": SubjectSection,
    "lora": LoraSection,
}


def resolved_method(method: str, subject_mode: bool) -> str:
    """``train.method`` with 'auto' resolved: LoRA in subject mode, full fine-tuning otherwise."""
    if method == "auto":
        return "lora" if subject_mode else "full"
    return method


def _check_value(section: str, name: str, value: Any, hint: Any) -> Any:
    where = f"{section}.{name}" if section else name
    if getattr(hint, "__origin__", None) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where} = {value!r} is not one of {list(choices)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if hint is list and not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if hint is dict and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


# Renamed options: [section] old name -> new name. The old name is still read, with a warning,
# for one release.
RENAMED = {
    "data": {"extend_share": "box_expansion"},
    "train": {"val_scale": "val_similarity"},
    "subject": {"prior_scale": "prior_similarity"},
}


def _renamed(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each old option name of ``section`` replaced by its new one (a
    FutureWarning each)."""
    values = dict(values)
    for old, new in RENAMED.get(section, {}).items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(
                f"{section}.{old} and {section}.{new} are both set: {old} is the old name of "
                f"{new}; keep only {section}.{new}"
            )
        warnings.warn(
            f"{section}.{old} is deprecated: it is now called {section}.{new} (same meaning); "
            f"rename it in the config file or --set",
            FutureWarning,
            stacklevel=2,
        )
        values[new] = values.pop(old)
    return values


def _build_section(cls: type, section: str, values: dict[str, Any]) -> Any:
    values = _renamed(section, values)
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"known [{section}] options: {', '.join(sorted(known))}"
        )
    return cls(**{k: _check_value(section, k, v, hints[k]) for k, v in values.items()})


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(data) - set(SECTIONS) - {"out_dir"})
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {unknown}; expected out_dir and the sections "
            f"{sorted(SECTIONS)}"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table, got {values!r}")
        sections[name] = _build_section(cls, name, values)
    out_dir = _check_value("", "out_dir", data.get("out_dir", "runs/pbe"), str)
    config = TrainConfig(out_dir=out_dir, **sections)
    validate(config)
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` (value in TOML syntax; bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if tomllib is None:
        raise ConfigError('reading TOML on Python 3.10 needs tomli: pip install -e ".[train]"')
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from exc
    for item in overrides:
        keys, value = parse_override(item)
        target = data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: {key} is not a section")
        target[keys[-1]] = value
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{_where(Path(path), overrides, str(exc))}{exc}") from exc


def _where(file: Path, overrides: list[str], message: str) -> str:
    """``FILE:LINE: `` for the first ``section.key`` a message names (``FILE: `` when the file
    does not set it), or ``--set ...: `` when an override set it."""
    match = re.search(r"\b(model|data|train|subject|lora)\.(\w+)", message)
    if match is None:
        return f"{file}: "
    section, key = match.groups()
    for item in overrides:
        if item.split("=", 1)[0].strip() == f"{section}.{key}":
            return f"--set {item}: "
    current = ""
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        header = re.match(r"\s*\[\s*([\w.]+)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return f"{file}:{number}: "
    return f"{file}: "


def validate(config: TrainConfig) -> None:
    """Cross-field checks, with what to change."""
    m, d, t, s = config.model, config.data, config.train, config.subject
    if m.init in ("sd", "sd_inpaint", "pbe") and not m.path:
        raise ConfigError(
            f"model.init = {m.init!r} needs model.path (the checkpoint to start from)"
        )
    if m.init in ("sd", "sd_inpaint") and not m.clip:
        raise ConfigError(
            f"model.init = {m.init!r} needs model.clip: the CLIP vision weights file for the "
            "frozen "
            "tower (e.g. open_clip's ViT-L-14 OpenAI weights); nothing is downloaded"
        )
    if not s.enabled and not d.path:
        raise ConfigError("data.path is empty: give the annotation file to train on")
    if not 0.0 <= d.min_area < d.max_area <= 1.0:
        raise ConfigError(
            f"need 0 <= data.min_area < data.max_area <= 1, got {d.min_area}, {d.max_area}"
        )
    for name in (
        "bezier_p",
        "hflip_p",
        "rotate_p",
        "blur_p",
        "warp_p",
        "box_expansion",
        "zoom_share",
    ):
        if not 0.0 <= getattr(d, name) <= 1.0:
            raise ConfigError(f"data.{name} must be in 0..1, got {getattr(d, name)}")
    if d.variants < 0:
        raise ConfigError(f"data.variants must be >= 0 (0 = fresh examples), got {d.variants}")
    if d.cache != "off" and d.variants == 0:
        raise ConfigError(
            f"data.cache = {d.cache!r} needs data.variants > 0: with fresh examples every epoch "
            "(data.variants = 0) nothing the frozen parts compute comes back"
        )
    if d.cache_max_gb <= 0:
        raise ConfigError(f"data.cache_max_gb must be > 0, got {d.cache_max_gb}")
    if d.resolution < 8 or d.resolution % 8:
        raise ConfigError(f"data.resolution must be a multiple of 8, got {d.resolution}")
    for name in ("batch_size", "grad_accum", "checkpoint_every", "log_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.fused_optimizer and t.optimizer != "adamw":
        raise ConfigError(
            f"train.fused_optimizer = true needs train.optimizer = 'adamw', got {t.optimizer!r}: "
            "set one of them back"
        )
    if t.max_steps < 0 or t.epochs < 0 or (t.max_steps == 0 and t.epochs == 0):
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
    if t.timestep_bias != "none" and not (
        t.timestep_bias_multiplier > 0 and 0 < t.timestep_bias_portion < 1
    ):
        raise ConfigError(
            "train.timestep_bias needs timestep_bias_multiplier > 0 and 0 < timestep_bias_portion "
            f"< 1, got {t.timestep_bias_multiplier} and {t.timestep_bias_portion}"
        )
    if t.noise_offset < 0:
        raise ConfigError(f"train.noise_offset must be >= 0 (0 = off), got {t.noise_offset}")
    if t.masked_loss_weight <= 0:
        raise ConfigError(
            f"train.masked_loss_weight must be > 0 (1 = plain MSE), got {t.masked_loss_weight}"
        )
    if not 0.0 <= t.cond_dropout <= 1.0:
        raise ConfigError(f"train.cond_dropout must be in 0..1, got {t.cond_dropout}")
    if not 0.0 < t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1), got {t.ema_decay}")
    if t.ema_every < 1:
        raise ConfigError(f"train.ema_every must be >= 1 (1 = every step), got {t.ema_every}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas needs two values, got {t.betas}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if t.lr_decay_steps < 0 or not 0.0 <= t.lr_end <= 1.0:
        raise ConfigError(
            "train.lr_decay_steps must be >= 0 (0 = every step after the warm-up) and "
            f"train.lr_end in 0..1, got {t.lr_decay_steps} and {t.lr_end}"
        )
    if s.enabled:
        if not s.path:
            raise ConfigError(
                "subject.enabled needs subject.path (the subject photos' annotations)"
            )
        if s.num_prior > 0 and not (s.class_exemplars or s.class_data):
            raise ConfigError(
                "subject mode with prior preservation needs class exemplars: set "
                "subject.class_exemplars (a folder) or subject.class_data + subject.class_names, "
                "or subject.num_prior = 0 to train without a prior"
            )
        if s.class_data and not s.class_names:
            raise ConfigError("subject.class_data needs subject.class_names (which class to crop)")
    validate_lora(config.lora)


def validate_lora(lora: LoraSection) -> None:
    """The [lora] section's ranges and module groups (checked whatever train.method is)."""
    from exemplar_core.lora import UNET_MODULE_GROUPS

    if lora.rank < 1:
        raise ConfigError(f"lora.rank must be >= 1, got {lora.rank}")
    if lora.alpha <= 0:
        raise ConfigError(f"lora.alpha must be > 0 (alpha = rank: scale 1), got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    unknown = [g for g in lora.unet_modules if g not in UNET_MODULE_GROUPS]
    if unknown:
        raise ConfigError(
            f"lora.unet_modules has unknown group(s) {unknown}; choose from "
            f"{list(UNET_MODULE_GROUPS)}"
        )
    if len(set(lora.unet_modules)) != len(lora.unet_modules):
        raise ConfigError(f"lora.unet_modules lists a group twice: {lora.unet_modules}")
    if not lora.unet_modules and lora.exemplar == "frozen":
        raise ConfigError(
            "lora.unet_modules is empty and lora.exemplar = 'frozen': nothing would be trained; "
            "name UNet module groups (e.g. ['attention']) or set lora.exemplar"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML, every option preceded by its documentation."""
    lines: list[str] = []
    top = dataclasses.fields(TrainConfig)[0]
    lines += [f"# {top.metadata['help']}", f"out_dir = {_toml_value(config.out_dir)}", ""]
    for name in SECTIONS:
        section = getattr(config, name)
        lines.append(f"[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"# {f.metadata.get('help', '')}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)
