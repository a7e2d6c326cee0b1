"""Paint-by-Example LoRA files: one ``.safetensors`` for the UNet and the exemplar side.

Layout (format version 1):

- **UNet**, in the kohya / sd-scripts layout that ComfyUI's stock ``LoraLoaderModelOnly`` reads:
  for the diffusers module path ``p`` of an adapted layer (``down_blocks.0.attentions.0.
  transformer_blocks.0.attn1.to_q``), ``lora_unet_<p with "." -> "_">.lora_down.weight``
  ([rank, in] or, for a convolution, [rank, in, kh, kw]), ``.lora_up.weight`` ([out, rank] or
  [out, rank, 1, 1]) and ``.alpha`` (a scalar). The update is ``(alpha / rank) * up @ down``.
- **Exemplar side**, under ``pbe_exemplar.`` followed by the module path inside the exemplar
  encoder (dots kept): LoRA on the mapper as ``pbe_exemplar.mapper.resblocks.0.attn.c_qkv
  .lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; fully trained parts as differences to
  the base weights, ComfyUI's ``diff`` convention: ``pbe_exemplar.proj_out.diff`` (weight),
  ``pbe_exemplar.proj_out.diff_b`` (bias), ``pbe_exemplar.learnable_vector.diff``.
- **Metadata** (strings): ``format`` = ``paint-by-example-lora``, ``format_version``, ``rank``,
  ``alpha``, ``unet_modules`` (JSON list of module groups), ``exemplar`` (``frozen``, ``full`` or
  ``lora``), ``base_model`` (what it was trained on), ``architecture`` (JSON: the UNet and encoder
  configs), ``training_config`` and ``training_step`` when the trainer wrote it, plus kohya's
  ``ss_network_dim`` / ``ss_network_alpha`` / ``ss_network_module`` for tools that list LoRAs.

A strength ``s`` scales every part linearly: ``W + s * delta``, computed in fp32 and cast to
the weight's dtype, as ComfyUI's own LoRA patcher does; a missing ``alpha`` means ``alpha = rank``.

Reading (``read_lora``) goes through ``checkpoint.safe_read`` and never unpickles; ``check_lora``
names what a file is when it is not for this model (an SD text-encoder LoRA, an SDXL or SD 2.x
LoRA, LyCORIS, a rank layout that does not add up, shapes of another model); ``apply_lora``
merges a file into a ``PaintByExampleModel`` in place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .checkpoint.container import CheckpointError
from .checks import LORA_STRENGTH_MAX, SettingError, check_number

if TYPE_CHECKING:
    from .checkpoint.container import PbECheckpoint
    from .model import PaintByExampleModel

log = logging.getLogger(__name__)

FORMAT = "paint-by-example-lora"
FORMAT_VERSION = "1"
UNET_PREFIX = "lora_unet_"
EXEMPLAR_PREFIX = "pbe_exemplar."

# Which UNet layers get adapters, by group (diffusers ``UNet2DConditionModel`` module paths).
UNET_MODULE_GROUPS: dict[str, re.Pattern[str]] = {
    "attention": re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"),
    "feed_forward": re.compile(r"\.ff\.net\.(0\.proj|2)$"),
    "projections": re.compile(r"\.attentions\.\d+\.(proj_in|proj_out)$"),
    "conv": re.compile(
        r"\.resnets\.\d+\.(conv1|conv2|conv_shortcut)$|\.(downsamplers|upsamplers)\.0\.conv$"
    ),
    "conv_in": re.compile(r"^conv_in$"),
}
DEFAULT_UNET_MODULES = ("attention",)

# The exemplar side: LoRA on the mapper's linear layers; the head around it is small and is
# trained whole ("lora" mode), or everything after the frozen CLIP tower is ("full" mode).
EXEMPLAR_MODES = ("frozen", "full", "lora")
MAPPER_LORA_MODULES = re.compile(
    r"^mapper\.resblocks\.\d+\.(attn\.c_qkv|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$"
)
EXEMPLAR_HEAD = ("final_ln", "proj_out", "learnable_vector")


def unet_target_modules(unet: nn.Module, groups: Iterable[str]) -> list[str]:
    """The module paths of ``unet`` (a diffusers UNet) that the given groups adapt, in order."""
    groups = list(groups)
    unknown = [g for g in groups if g not in UNET_MODULE_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown UNet module group(s) {unknown}; choose from {sorted(UNET_MODULE_GROUPS)}"
        )
    patterns = [UNET_MODULE_GROUPS[g] for g in groups]
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(p.search(name) for p in patterns)
    ]


def mapper_target_modules(encoder: nn.Module) -> list[str]:
    """The mapper's linear layers (module paths inside the exemplar encoder)."""
    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and MAPPER_LORA_MODULES.search(name)
    ]


def unet_key(module_path: str) -> str:
    """The file's key stem for a UNet module path (kohya layout)."""
    return UNET_PREFIX + module_path.replace(".", "_")


def exemplar_key(module_path: str) -> str:
    """The file's key stem for a module path inside the exemplar encoder."""
    return EXEMPLAR_PREFIX + module_path


def lora_pair(stem: str, down: Tensor, up: Tensor, alpha: float) -> dict[str, Tensor]:
    """One adapted layer's three entries."""
    return {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(float(alpha)),
    }


def save_lora(
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write a LoRA file atomically, replacing ``path`` (floating tensors cast to ``dtype``;
    ``alpha`` stays fp32)."""
    from safetensors.torch import save_file

    from .checkpoint.container import prepare_tensors, resolve_dtype
    from .files import atomic_write

    out = Path(path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: a LoRA file must end in .safetensors")
    alphas = {k: v.float().reshape(()) for k, v in tensors.items() if k.endswith(".alpha")}
    rest = {k: v for k, v in tensors.items() if k not in alphas}
    prepared = {**prepare_tensors(rest, resolve_dtype(dtype)), **alphas}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(metadata)}
    atomic_write(out, lambda tmp: save_file(prepared, str(tmp), meta))
    return out


# ---------------------------------------------------------------------------------------------
# Reading a file
# ---------------------------------------------------------------------------------------------


class LoraError(CheckpointError):
    """A LoRA file or strength this pack cannot use; the message names what was found and what
    was expected."""


# The entries of one adapted layer: kohya LoRA, or ComfyUI's whole-weight differences.
LORA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
DIFF_PARTS = ("diff", "diff_b")
# Exemplar-encoder parameters that are not a module's ``weight``: their stem is the parameter.
EXEMPLAR_PARAMETERS = ("learnable_vector",)

# Adapter kinds other tools write, by their key suffixes: named in the refusal.
_UNSUPPORTED_ADAPTERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.hada_(w[12]_[ab]|t[12])$"), "LyCORIS LoHa (hada_w1_a, hada_w1_b, ...)"),
    (re.compile(r"\.lokr_(w[12](_[ab])?|t2)$"), "LyCORIS LoKr (lokr_w1, lokr_w2, ...)"),
    (re.compile(r"\.lora_mid\.weight$"), "LoCon with a Tucker middle weight (lora_mid)"),
    (re.compile(r"\.dora_scale$"), "DoRA (dora_scale)"),
    (re.compile(r"\.(w_norm|b_norm)$"), "LyCORIS norm layers (w_norm, b_norm)"),
    (re.compile(r"\.(oft_blocks|oft_diag|rescale)$"), "OFT / BOFT (oft_blocks)"),
    (re.compile(r"\.lora_[AB](\.default)?(\.weight)?$"), "peft / diffusers (lora_A, lora_B)"),
    (
        re.compile(r"(_lora|\.lora|\.lora_linear_layer)\.(up|down)\.weight$"),
        "diffusers attention-processor LoRA (lora.up, lora.down)",
    ),
)
# Text-encoder LoRA keys of Stable Diffusion LoRAs (a Paint-by-Example model has no text encoder).
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder")
# The cross-attention context width says which Stable Diffusion a UNet LoRA was made for.
_CONTEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_SDXL_UNET_KEYS = re.compile(r"label_emb|add_embedding|transformer_blocks_[1-9]")


def _split_key(key: str) -> tuple[str, str] | None:
    """``(stem, part)`` of a LoRA entry (``part`` one of LORA_PARTS / DIFF_PARTS), else None."""
    for part in (*LORA_PARTS, *DIFF_PARTS):
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    return None


def _exemplar_parameter(stem: str) -> str:
    """The ``ExemplarEncoder`` state-dict key a ``pbe_exemplar.`` stem patches."""
    path = stem.removeprefix(EXEMPLAR_PREFIX)
    return path if path in EXEMPLAR_PARAMETERS else path + ".weight"


def _bias_key(weight_key: str) -> str:
    return weight_key.removesuffix(".weight") + ".bias"


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


@dataclass
class LoraFile:
    """A LoRA file's tensors and metadata strings, as read (see the module docstring)."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]

    @property
    def name(self) -> str:
        return self.path.name

    def layers(self) -> dict[str, dict[str, Tensor]]:
        """Each adapted layer's entries by stem: ``{stem: {"lora_down.weight": t, ...}}``."""
        out: dict[str, dict[str, Tensor]] = {}
        for key, tensor in self.tensors.items():
            split = _split_key(key)
            if split is not None:
                out.setdefault(split[0], {})[split[1]] = tensor
        return out

    @property
    def rank(self) -> int:
        """The metadata's rank, else the first adapter's (0 for a file of differences only)."""
        if self.metadata.get("rank", "").isdigit():
            return int(self.metadata["rank"])
        downs = [t for k, t in self.tensors.items() if k.endswith(".lora_down.weight")]
        return int(downs[0].shape[0]) if downs else 0

    @property
    def alpha(self) -> float:
        """The metadata's alpha, else the first adapter's; the rank when the file has none."""
        try:
            return float(self.metadata["alpha"])
        except (KeyError, ValueError):
            pass
        alphas = [t for k, t in self.tensors.items() if k.endswith(".alpha")]
        return float(alphas[0]) if alphas else float(self.rank)

    @property
    def exemplar_mode(self) -> str:
        """``frozen``, ``full`` or ``lora``: the metadata's, else read from the keys."""
        if "exemplar" in self.metadata:
            return self.metadata["exemplar"]
        parts = {
            p for stem, e in self.layers().items() if stem.startswith(EXEMPLAR_PREFIX) for p in e
        }
        if "lora_down.weight" in parts:
            return "lora"
        return "full" if parts else "frozen"

    def unet_stems(self) -> list[str]:
        """The ``lora_unet_`` stems (one per adapted UNet layer), sorted."""
        return sorted(stem for stem in self.layers() if stem.startswith(UNET_PREFIX))

    def exemplar_targets(self) -> dict[str, str]:
        """Each ``pbe_exemplar.`` stem -> the ``ExemplarEncoder`` state-dict key it patches
        (``.diff_b`` patches the same module's ``bias``)."""
        return {
            stem: _exemplar_parameter(stem)
            for stem in sorted(self.layers())
            if stem.startswith(EXEMPLAR_PREFIX)
        }

    def unet_tensors(self) -> dict[str, Tensor]:
        """Only the ``lora_unet_`` entries: what ComfyUI's stock LoRA loader applies."""
        return {k: v for k, v in self.tensors.items() if k.startswith(UNET_PREFIX)}

    def parameter_count(self) -> int:
        return sum(t.numel() for k, t in self.tensors.items() if not k.endswith(".alpha"))

    def describe(self) -> str:
        """What ``info`` prints: format, rank, modules, exemplar mode, sizes, provenance."""
        return "\n".join(_describe_lines(self))


def read_lora(path: str | os.PathLike[str]) -> LoraFile:
    """A LoRA ``.safetensors`` (read without running code); anything else -> ``LoraError``.

    Only the file's kind is checked here (a LoRA at all, readable); ``check_lora`` checks it
    against a model.
    """
    p = Path(path)
    if not p.exists():
        raise LoraError(f"LoRA file {p} does not exist")
    if p.is_dir():
        raise LoraError(f"LoRA file {p} is a folder; give the .safetensors file inside it")
    if p.suffix != ".safetensors":
        raise LoraError(
            f"{p}: LoRA files are read only from .safetensors; this pack never unpickles a LoRA "
            f"(a {p.suffix or 'file without extension'} can run code when loaded). Convert it "
            f"once with a tool you trust, or use the .safetensors version."
        )
    from .checkpoint.safe_read import read_safetensors

    try:
        # The header first (meta tensors): a whole model put in models/loras is refused before
        # gigabytes of it are read.
        shapes, metadata = read_safetensors(p, lazy=True)
        _refuse_non_lora(p, shapes, metadata)
        tensors, metadata = read_safetensors(p, lazy=False)
    except LoraError:
        raise
    except CheckpointError as err:
        raise LoraError(f"LoRA file {err}") from err
    return LoraFile(p, tensors, metadata)


def is_lora_keys(keys: Iterable[str], metadata: Mapping[str, str]) -> bool:
    """Whether a ``.safetensors`` file's keys (or metadata) make it a LoRA of some kind."""
    if metadata.get("format") == FORMAT:
        return True
    for key in keys:
        if key.startswith((UNET_PREFIX, EXEMPLAR_PREFIX, "lora_te")):
            return True
        if _split_key(key) is not None or any(p.search(key) for p, _ in _UNSUPPORTED_ADAPTERS):
            return True
    return False


def _refuse_non_lora(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> None:
    """Say what a ``.safetensors`` is when it is not a LoRA (a whole model, something else)."""
    from .checkpoint.container import FORMAT_NAME
    from .checkpoint.container import UNET_PREFIX as MODEL_UNET_PREFIX
    from .checkpoint.detect import describe_foreign_checkpoint
    from .checkpoint.keymap import describe_keys

    if is_lora_keys(tensors, meta):
        return
    expected = (
        f"expected a LoRA file (keys {UNET_PREFIX}*.lora_down.weight / .lora_up.weight / .alpha "
        f"and {EXEMPLAR_PREFIX}*, as python -m train writes)"
    )
    if meta.get("format") == FORMAT_NAME:
        found = "a whole Paint-by-Example model (this pack's single file); load it as the model"
    elif any(k.startswith(MODEL_UNET_PREFIX) for k in tensors):
        what = describe_foreign_checkpoint(tensors)
        found = f"a whole model checkpoint ({what or 'the official Paint-by-Example model'})"
    elif "conv_in.weight" in tensors:
        found = "a whole diffusers UNet (conv_in.weight, ...), not a LoRA"
    else:
        tops = {".".join(k.split(".")[:2]) for k in tensors}
        found = f"no LoRA keys (top-level keys: {describe_keys(tops) or 'none'})"
    raise LoraError(f"{path} is {found}; {expected}")


def check_strength(value: object, what: str) -> float:
    """A LoRA strength as a float; NaN, infinity or beyond +-LORA_STRENGTH_MAX -> ``LoraError``
    naming ``what`` (``--lora FILE:STRENGTH``, ``strength``)."""
    try:
        check_number(value, what, -LORA_STRENGTH_MAX, LORA_STRENGTH_MAX)
    except SettingError as err:
        raise LoraError(f"{err}; 1 applies the LoRA as trained, 0 not at all") from None
    return float(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Checking a file against a model
# ---------------------------------------------------------------------------------------------


def _unet_layout(unet_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """The block layout of a diffusers UNet read from its keys (what the LDM key table needs)."""
    from .checkpoint.keymap import count_indexed

    keys = list(unet_shapes)
    levels = count_indexed(keys, "down_blocks.")
    if not levels or count_indexed(keys, "up_blocks.") != levels:
        return None
    channels = []
    for level in range(levels):
        shape = unet_shapes.get(f"down_blocks.{level}.resnets.0.conv1.weight")
        if shape is None:
            return None
        channels.append(int(shape[0]))

    def block_type(part: str, level: int, kind: str) -> str:
        attends = any(k.startswith(f"{part}.{level}.attentions.") for k in keys)
        return f"CrossAttn{kind}Block2D" if attends else f"{kind}Block2D"

    return {
        "block_out_channels": channels,
        "layers_per_block": count_indexed(keys, "down_blocks.0.resnets."),
        "down_block_types": [block_type("down_blocks", i, "Down") for i in range(levels)],
        "up_block_types": [block_type("up_blocks", i, "Up") for i in range(levels)],
    }


def unet_stem_table(unet_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Every kohya stem that names a layer of this UNet -> its diffusers weight key.

    Both namings ComfyUI accepts: the diffusers module path (what this pack writes) and the LDM
    one (``lora_unet_input_blocks_1_1_...``, what most SD 1.x tools write).
    """
    from .checkpoint.keymap import KeyMappingError, unet_diffusers_to_ldm

    weights = [k for k in unet_shapes if k.endswith(".weight")]
    table = {unet_key(k.removesuffix(".weight")): k for k in weights}
    layout = _unet_layout(unet_shapes)
    if layout is None:
        return table
    stand_ins = {k: torch.empty(0, device="meta") for k in weights}
    diffusers_of = {id(t): k for k, t in stand_ins.items()}
    try:
        ldm = unet_diffusers_to_ldm(stand_ins, layout)
    except KeyMappingError:
        return table
    for ldm_key, tensor in ldm.items():
        table.setdefault(unet_key(ldm_key.removesuffix(".weight")), diffusers_of[id(tensor)])
    return table


def _show(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def _made_for(lora: LoraFile) -> str:
    """What the file says (or its shapes say) it was made for, for messages."""
    said = [
        f"{key}={lora.metadata[key]}"
        for key in (
            "base_model",
            "ss_base_model_version",
            "ss_sd_model_name",
            "modelspec.architecture",
        )
        if lora.metadata.get(key)
    ]
    arch = _json(lora.metadata.get("architecture"))
    if isinstance(arch, dict) and isinstance(arch.get("unet"), dict):
        said.append(f"architecture: {_unet_summary(arch['unet'])}")
    widths = {
        int(t.shape[1])
        for k, t in lora.tensors.items()
        if re.search(r"attn2_to_k\.lora_down\.weight$", k) and t.ndim >= 2
    }
    said += [
        f"{_CONTEXT_WIDTHS[w]} shapes ({w}-wide cross-attention)"
        for w in widths
        if w in _CONTEXT_WIDTHS
    ]
    return "; ".join(said) if said else "no base model recorded"


def _unet_summary(config: Mapping[str, Any]) -> str:
    return (
        f"UNet in {config.get('in_channels', '?')}, channels "
        f"{list(config.get('block_out_channels', []))}, context "
        f"{config.get('cross_attention_dim', '?')}"
    )


def check_layout(lora: LoraFile) -> None:
    """The checks that need no model: a known adapter kind, no text encoder, every layer's
    entries complete with matching ranks, finite values. Raises ``LoraError``."""
    from .checkpoint.keymap import describe_keys

    keys = list(lora.tensors)
    where = str(lora.path)
    for pattern, kind in _UNSUPPORTED_ADAPTERS:
        found = [k for k in keys if pattern.search(k)]
        if found:
            raise LoraError(
                f"{where} is a {kind} file ({describe_keys(found, 3)}): not supported; expected "
                f"a kohya-layout LoRA (*.lora_down.weight, *.lora_up.weight, *.alpha), which is "
                f"what python -m train writes"
            )
    text = [k for k in keys if k.startswith(_TEXT_ENCODER_PREFIXES)]
    if text:
        sdxl = any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2")) for k in text)
        widths = {
            int(lora.tensors[k].shape[1])
            for k in text
            if k.endswith("lora_down.weight") and lora.tensors[k].ndim >= 2
        }
        base = "SDXL" if sdxl else "SD 2.x" if 1024 in widths else "SD 1.x"
        raise LoraError(
            f"{where} is an {base} LoRA with a text-encoder part ({len(text)} keys such as "
            f"{describe_keys(text, 2)}; {_made_for(lora)}). A Paint-by-Example model has no text "
            f"encoder: it is conditioned on an exemplar image. Expected only {UNET_PREFIX}* and "
            f"{EXEMPLAR_PREFIX}* keys, from a LoRA trained on Paint-by-Example (python -m train)."
        )
    other = [
        k for k in keys if _split_key(k) is None or not k.startswith((UNET_PREFIX, EXEMPLAR_PREFIX))
    ]
    if other:
        raise LoraError(
            f"{where} has keys this pack does not know: {describe_keys(other, 4)}; expected "
            f"{UNET_PREFIX}<layer>.{{lora_down.weight,lora_up.weight,alpha}} and "
            f"{EXEMPLAR_PREFIX}<module>.{{lora_down.weight,lora_up.weight,alpha,diff,diff_b}}"
        )
    version = lora.metadata.get("format_version")
    if lora.metadata.get("format") == FORMAT and version != FORMAT_VERSION:
        raise LoraError(
            f"{where} has format_version {version!r}; this version of the pack reads "
            f"{FORMAT_VERSION!r}. Update the node pack."
        )
    mode = lora.metadata.get("exemplar")
    if mode is not None and mode not in EXEMPLAR_MODES:
        raise LoraError(f"{where}: metadata exemplar={mode!r}; expected one of {EXEMPLAR_MODES}")
    said_rank = lora.metadata.get("rank")
    for stem, entries in lora.layers().items():
        _check_entries(where, stem, entries, said_rank)
    bad = [
        k for k, t in lora.tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        raise LoraError(
            f"{where} holds NaN or infinite values in {len(bad)} tensor(s) "
            f"({describe_keys(bad, 3)}): the file is damaged or comes from a diverged training "
            f"run; export it again"
        )


def _check_entries(
    where: str, stem: str, entries: Mapping[str, Tensor], said_rank: str | None
) -> None:
    """One layer's entries: a complete LoRA pair (ranks agreeing) or differences, not both."""
    lora_parts = {p for p in entries if p in LORA_PARTS}
    if not lora_parts:
        return
    if set(entries) & set(DIFF_PARTS):
        raise LoraError(f"{where}: {stem} has both LoRA and diff entries; expected one kind")
    for part in ("lora_down.weight", "lora_up.weight"):
        if part not in entries:
            raise LoraError(
                f"{where}: {stem} has no {part}; a LoRA layer needs lora_down and lora_up"
            )
    down, up = entries["lora_down.weight"], entries["lora_up.weight"]
    if (
        down.ndim not in (2, 4)
        or up.ndim not in (2, 4)
        or (up.ndim == 4 and up.shape[2:] != (1, 1))
    ):
        raise LoraError(
            f"{where}: {stem} has lora_down {_show(down.shape)} and lora_up {_show(up.shape)}; "
            f"expected [rank, in] and [out, rank] (a linear layer) or [rank, in, kh, kw] and "
            f"[out, rank, 1, 1] (a convolution)"
        )
    if down.shape[0] == 0 or up.shape[1] == 0:
        raise LoraError(
            f"{where}: {stem} has rank 0 (lora_down {_show(down.shape)}, lora_up "
            f"{_show(up.shape)}): an empty adapter; expected a rank of 1 or more"
        )
    if down.shape[0] != up.shape[1]:
        raise LoraError(
            f"{where}: {stem} has a rank layout that does not add up: lora_down "
            f"{_show(down.shape)} has {down.shape[0]} rows but lora_up {_show(up.shape)} has "
            f"{up.shape[1]} columns; expected the same rank in both"
        )
    if said_rank is not None and said_rank.isdigit() and int(said_rank) != down.shape[0]:
        raise LoraError(
            f"{where}: {stem} has rank {down.shape[0]} (lora_down {_show(down.shape)}) but the "
            f"file's metadata says rank {said_rank}; expected every layer at the recorded rank"
        )
    if "alpha" in entries and entries["alpha"].numel() != 1:
        raise LoraError(
            f"{where}: {stem}.alpha has shape {_show(entries['alpha'].shape)}; expected a scalar"
        )


def _expected_pair(shape: tuple[int, ...], rank: int) -> str:
    if len(shape) == 4:
        return f"lora_down {_show((rank, *shape[1:]))} and lora_up [{shape[0]}, {rank}, 1, 1]"
    return f"lora_down [{rank}, {math.prod(shape[1:])}] and lora_up [{shape[0]}, {rank}]"


def _pair_fits(down: Tensor, up: Tensor, shape: tuple[int, ...]) -> bool:
    """What ComfyUI needs to apply the pair: ``up.flatten(1) @ down.flatten(1)`` reshapes to
    the weight, and a convolution's kernel matches when the down weight has one."""
    if up.shape[0] != shape[0] or down[0].numel() != math.prod(shape[1:]):
        return False
    return down.ndim == 2 or tuple(down.shape[1:]) == tuple(shape[1:]) or len(shape) == 2


def check_lora(
    lora: LoraFile,
    unet_shapes: Mapping[str, tuple[int, ...]],
    encoder_shapes: Mapping[str, tuple[int, ...]],
    target: str,
) -> None:
    """Raise ``LoraError`` unless every entry of ``lora`` fits the model.

    ``unet_shapes``: diffusers UNet state-dict key -> shape; ``encoder_shapes``: ExemplarEncoder
    state-dict key -> shape (empty for a model without one); ``target`` names the model in
    messages. Messages name what was found (keys, shapes, the file's base model) and what the
    target expects.
    """
    _checked_targets(lora, unet_shapes, encoder_shapes, target)


def _checked_targets(
    lora: LoraFile,
    unet_shapes: Mapping[str, tuple[int, ...]],
    encoder_shapes: Mapping[str, tuple[int, ...]],
    target: str,
) -> dict[str, str]:
    """``check_lora``, returning each stem's state-dict key (in the UNet or the encoder)."""
    from .checkpoint.keymap import describe_keys

    check_layout(lora)
    where = str(lora.path)
    layers = lora.layers()
    table = unet_stem_table(unet_shapes)
    unet_stems = [s for s in layers if s.startswith(UNET_PREFIX)]
    unknown = [s for s in unet_stems if s not in table]
    if unknown:
        sdxl = [s for s in unknown if _SDXL_UNET_KEYS.search(s)]
        kind = " is an SDXL LoRA" if sdxl else ""
        raise LoraError(
            f"{where}{kind}: {len(unknown)} of its {len(unet_stems)} UNet layers name no layer of "
            f"{target} ({describe_keys(sdxl or unknown, 3)}; {_made_for(lora)}). Expected a LoRA "
            f"trained on this model's UNet (diffusers or LDM layer names)."
        )
    named: dict[str, str] = {}
    for stem in sorted(unet_stems):
        first = named.setdefault(table[stem], stem)
        if first != stem:
            raise LoraError(
                f"{where}: {first} and {stem} both name {target}'s UNet layer {table[stem]} (its "
                f"diffusers and its LDM name); expected each layer once (ComfyUI's LoRA loader "
                f"would apply only one of them). Export the file again."
            )
    exemplar = [s for s in layers if s.startswith(EXEMPLAR_PREFIX)]
    if exemplar and not encoder_shapes:
        raise LoraError(
            f"{where} has an exemplar-encoder part ({describe_keys(exemplar, 2)}) but {target} has "
            f"no Paint-by-Example exemplar encoder: it is not a Paint-by-Example model"
        )
    missing = [s for s in exemplar if _exemplar_parameter(s) not in encoder_shapes]
    if missing:
        raise LoraError(
            f"{where}: {describe_keys(missing, 3)} name no parameter of the exemplar encoder of "
            f"{target} ({_made_for(lora)}); expected {EXEMPLAR_PREFIX}<module path of "
            f"ExemplarEncoder>, e.g. {EXEMPLAR_PREFIX}mapper.resblocks.0.attn.c_qkv"
        )
    targets = {}
    for stem, entries in layers.items():
        if stem.startswith(UNET_PREFIX):
            key, shapes, part = table[stem], unet_shapes, "UNet"
        else:
            key, shapes, part = _exemplar_parameter(stem), encoder_shapes, "exemplar encoder"
        targets[stem] = key
        shape = tuple(int(n) for n in shapes[key])
        problem = _entry_problem(entries, key, shape, shapes)
        if problem:
            raise LoraError(
                f"{where}: {stem} does not fit {target}'s {part} layer {key}: {problem}. The LoRA "
                f"says {_made_for(lora)}; expected a LoRA trained on this model."
            )
    if lora.metadata.get("format") != FORMAT:
        log.warning(
            "%s has no %s metadata: applied because its shapes fit (%s)",
            lora.path,
            FORMAT,
            _made_for(lora),
        )
    return targets


def _entry_problem(
    entries: Mapping[str, Tensor],
    key: str,
    shape: tuple[int, ...],
    shapes: Mapping[str, tuple[int, ...]],
) -> str | None:
    """Why one layer's entries do not fit the weight ``key`` of ``shape`` (None when they do)."""
    if "lora_down.weight" in entries:
        down, up = entries["lora_down.weight"], entries["lora_up.weight"]
        if len(shape) not in (2, 4):
            return (
                f"a LoRA pair needs a linear or convolution weight, the layer's is {_show(shape)}"
            )
        if not _pair_fits(down, up, shape):
            return (
                f"found lora_down {_show(down.shape)} and lora_up {_show(up.shape)}, expected "
                f"{_expected_pair(shape, int(down.shape[0]))} for its weight {_show(shape)}"
            )
    if "diff" in entries and tuple(entries["diff"].shape) != shape:
        return f"found diff {_show(entries['diff'].shape)}, expected {_show(shape)}"
    if "diff_b" in entries:
        bias = shapes.get(_bias_key(key))
        if bias is None:
            return "it has diff_b, but the layer has no bias"
        if tuple(entries["diff_b"].shape) != tuple(bias):
            return f"found diff_b {_show(entries['diff_b'].shape)}, expected {_show(bias)}"
    return None


# ---------------------------------------------------------------------------------------------
# Applying a file
# ---------------------------------------------------------------------------------------------


def lora_delta(
    entries: Mapping[str, Tensor], shape: torch.Size, device: torch.device, strength: float = 1.0
) -> Tensor:
    """One layer's weight update in fp32, ``(strength * alpha / rank) * up @ down`` (a
    convolution's weights flattened, the product reshaped), with the operations in the order of
    ComfyUI's ``comfy/weight_adapter/lora.py`` so both give the same bits; a missing alpha means
    alpha = rank (scale 1)."""
    down = entries["lora_down.weight"].to(device, torch.float32)
    up = entries["lora_up.weight"].to(device, torch.float32)
    scale = float(entries["alpha"]) / down.shape[0] if "alpha" in entries else 1.0
    product = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(shape)
    return (strength * scale) * product


def _patch(param: Tensor, delta: Tensor) -> None:
    """``param += delta`` (delta fp32) in fp32, cast back to the parameter's dtype."""
    param.data.copy_((param.detach().to(torch.float32) + delta).to(param.dtype))


def apply_lora(model: PaintByExampleModel, lora: LoraFile, strength: float = 1.0) -> None:
    """Check ``lora`` against ``model``, then merge it in place: ``W += s * delta`` for every
    layer it adapts, in fp32, cast back to each weight's dtype. Calling it again stacks another
    file (or the same one again)."""
    strength = check_strength(strength, "LoRA strength")
    unet = dict(model.unet.named_parameters())
    encoder = dict(model.encoder.named_parameters())
    unet_shapes = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    encoder_shapes = {k: tuple(v.shape) for k, v in model.encoder.state_dict().items()}
    target = f"this Paint-by-Example model ({_unet_summary(model.configs.unet)})"
    targets = _checked_targets(lora, unet_shapes, encoder_shapes, target)
    if strength == 0.0:
        return
    with torch.no_grad():
        for stem, entries in lora.layers().items():
            key = targets[stem]
            params = unet if stem.startswith(UNET_PREFIX) else encoder
            weight = params[key]
            if "lora_down.weight" in entries:
                _patch(weight, lora_delta(entries, weight.shape, weight.device, strength))
            if "diff" in entries:
                _patch(weight, strength * entries["diff"].to(weight.device, torch.float32))
            if "diff_b" in entries:
                bias = params[_bias_key(key)]
                _patch(bias, strength * entries["diff_b"].to(bias.device, torch.float32))


def parse_lora_argument(text: str, what: str = "--lora") -> tuple[Path, float]:
    """``FILE[:STRENGTH]`` -> ``(file, strength)``; strength 1 when none is given.

    The text after the last ``:`` is a strength only when the whole argument is not an existing
    file (so ``C:\\loras\\a.safetensors`` and names with colons work). ``what`` names the option
    in messages. The file itself is checked by ``read_lora``.
    """
    if ":" not in text or Path(text).exists():
        return Path(text), 1.0
    head, _, tail = text.rpartition(":")
    try:
        value = float(tail)
    except ValueError:
        if Path(head).exists():
            raise LoraError(
                f"{what} {text}: the strength {tail!r} after the last ':' is not a number; "
                f"expected FILE or FILE:STRENGTH, e.g. {head}:0.8"
            ) from None
        return Path(text), 1.0  # no file by either reading: read_lora names the whole argument
    return Path(head), check_strength(value, f"{what} {text}: the strength")


def merge_loras(ckpt: PbECheckpoint, loras: Sequence[tuple[LoraFile, float]]) -> PbECheckpoint:
    """``ckpt`` with each ``(lora, strength)`` merged in order (fp32 arithmetic); the metadata
    ``merged_loras`` (a JSON list) records each file's name, strength and base model."""
    from .checkpoint.load import checkpoint_from_model, model_from_checkpoint

    model = model_from_checkpoint(ckpt, dtype=torch.float32)
    for lora, strength in loras:
        apply_lora(model, lora, strength)
    merged = _json(ckpt.metadata.get("merged_loras"))
    merged = merged if isinstance(merged, list) else []
    for lora, strength in loras:
        record = {"file": lora.name, "strength": strength, "rank": lora.rank}
        record.update(
            {k: lora.metadata[k] for k in ("base_model", "training_step") if k in lora.metadata}
        )
        merged.append(record)
    out = checkpoint_from_model(model, {**ckpt.metadata, "merged_loras": json.dumps(merged)})
    out.source = ckpt.source  # save_single_file refuses to write over the base
    return out


# ---------------------------------------------------------------------------------------------
# Describing a file (``python -m exemplar_core info``)
# ---------------------------------------------------------------------------------------------

# The module groups as they appear in kohya stems ("." -> "_"), to count a file's layers.
_STEM_GROUPS = {
    group: re.compile(pattern.pattern.replace(r"\.", "_").replace("^", "^" + UNET_PREFIX))
    for group, pattern in UNET_MODULE_GROUPS.items()
}
# Trainer options worth a line in ``info`` (dotted paths into the training_config JSON).
_CONFIG_SUMMARY = (
    "train.method",
    "train.lr",
    "train.batch_size",
    "train.grad_accum",
    "train.max_steps",
    "train.mixed_precision",
    "data.resolution",
    "subject.enabled",
    "lora.dropout",
)


def _group_counts(stems: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for stem in stems:
        group = next((g for g, p in _STEM_GROUPS.items() if p.search(stem)), "other")
        counts[group] = counts.get(group, 0) + 1
    return counts


def _config_summary(text: str | None) -> str | None:
    config = _json(text)
    if not isinstance(config, dict):
        return text[:200] if text else None
    found = []
    for path in _CONFIG_SUMMARY:
        value: Any = config
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            found.append(f"{path}={value}")
    return ", ".join(found) or f"{len(config)} sections ({', '.join(sorted(config)[:6])})"


def _describe_lines(lora: LoraFile) -> list[str]:
    meta = lora.metadata
    size = lora.path.stat().st_size if lora.path.exists() else 0
    ours = meta.get("format") == FORMAT
    groups = _group_counts(lora.unet_stems())
    layers = lora.layers()
    dtypes = sorted(
        {
            str(t.dtype).removeprefix("torch.")
            for t in lora.tensors.values()
            if t.is_floating_point()
        }
    )
    said_groups = _json(meta.get("unet_modules"))
    targets = lora.exemplar_targets()
    mapper = [s for s in targets if "lora_down.weight" in layers[s]]
    whole = sorted({t.removesuffix(".weight") for s, t in targets.items() if s not in mapper})
    exemplar = lora.exemplar_mode
    if mapper:
        exemplar += f": LoRA on {len(mapper)} mapper layer{'s' if len(mapper) > 1 else ''}"
    if whole:
        exemplar += f"{';' if mapper else ':'} stored whole as differences: {', '.join(whole[:6])}"
        exemplar += f" and {len(whole) - 6} more" if len(whole) > 6 else ""
    alpha, rank = lora.alpha, lora.rank
    lines = [
        f"source:   {lora.path}",
        "format:   "
        + (
            f"Paint-by-Example LoRA, format version {meta.get('format_version', '?')}"
            if ours
            else "a kohya-layout LoRA without this pack's metadata"
        ),
        f"rank:     {rank}, alpha {alpha:g}"
        + (f" (scale alpha/rank = {alpha / rank:g})" if rank else ""),
        f"unet:     {len(lora.unet_stems())} layers ("
        + ", ".join(f"{g} {n}" for g, n in groups.items())
        + ")"
        + (f"; groups trained: {', '.join(said_groups)}" if isinstance(said_groups, list) else ""),
        f"exemplar: {exemplar}",
        f"params:   {lora.parameter_count():,} ({lora.parameter_count() / 1e6:.2f} M), dtype "
        f"{'+'.join(dtypes) or 'none'}, file {size / 2**20:.1f} MiB",
        f"base:     {meta.get('base_model') or 'not recorded'}",
    ]
    arch = _json(meta.get("architecture"))
    if isinstance(arch, dict) and isinstance(arch.get("unet"), dict):
        lines.append(f"arch:     {_unet_summary(arch['unet'])}")
    if meta.get("training_step"):
        ema = " (the EMA of the weights)" if meta.get("ema") == "True" else ""
        lines.append(f"trained:  {meta['training_step']} steps{ema}")
    summary = _config_summary(meta.get("training_config"))
    if summary:
        lines.append(f"config:   {summary}")
    try:
        check_layout(lora)
    except LoraError as err:
        lines.append(f"usable:   no: {err}")
    return lines


__all__ = [
    "DEFAULT_UNET_MODULES",
    "DIFF_PARTS",
    "EXEMPLAR_PARAMETERS",
    "LORA_PARTS",
    "LoraError",
    "LoraFile",
    "apply_lora",
    "check_layout",
    "check_lora",
    "check_strength",
    "is_lora_keys",
    "lora_delta",
    "merge_loras",
    "parse_lora_argument",
    "read_lora",
    "unet_stem_table",
    "EXEMPLAR_HEAD",
    "EXEMPLAR_MODES",
    "EXEMPLAR_PREFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "UNET_MODULE_GROUPS",
    "UNET_PREFIX",
    "exemplar_key",
    "lora_pair",
    "mapper_target_modules",
    "save_lora",
    "unet_key",
    "unet_target_modules",
]
