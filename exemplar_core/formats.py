"""Reading and writing Paint-by-Example checkpoints in every layout they come in.

Formats (``detect_format`` names):

- ``official-ckpt``: the official Lightning ``model.ckpt`` (weights under ``state_dict``), read with
  ``torch.load(weights_only=True)``: no code from the file ever runs.
- ``official-safetensors``: the same LDM keys in a ``.safetensors`` file.
- ``diffusers``: a diffusers pipeline folder (``unet/``, ``vae/``, ``image_encoder/``), any size.
- ``single-file``: the project's own ``.safetensors`` (see ``docs/checkpoint-format.md``):
  ``model.diffusion_model.*`` (LDM UNet), ``first_stage_model.*`` (LDM VAE),
  ``exemplar_encoder.*`` (``ExemplarEncoder.state_dict()``), configs in the metadata.

Everything is held in a ``PbECheckpoint`` with LDM UNet/VAE keys and our encoder keys.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from . import keymap
from .config import CLIP_MEAN, CLIP_STD, ConfigError, EncoderConfig
from .files import atomic_write, atomic_write_text, same_file
from .model import ModelConfigs, PaintByExampleModel

log = logging.getLogger(__name__)

Tensor = torch.Tensor
StateDict = dict[str, Tensor]
Format = Literal["official-ckpt", "official-safetensors", "diffusers", "single-file"]

FORMAT_NAME = "paint-by-example-comfy"
FORMAT_VERSION = "1"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
ENCODER_PREFIX = "exemplar_encoder."
RESERVED_METADATA = ("format", "format_version", "unet_config", "vae_config", "encoder_config")

EXPECTED_OFFICIAL = (
    "expected a Paint-by-Example checkpoint: model.diffusion_model.* (UNet with 9 input channels), "
    "first_stage_model.* (VAE), cond_stage_model.transformer.* (CLIP vision tower), "
    "cond_stage_model.mapper.*, cond_stage_model.final_ln.*, proj_out.* and learnable_vector"
)
# Keys of the official checkpoint that are not weights of the model (DDPM schedule, EMA, logvar).
IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "lvlb_weights",
        "logvar",
    }
)
IGNORED_OFFICIAL_PREFIXES = ("model_ema.",)
OFFICIAL_HEAD_KEYS = frozenset(name for name, _ in keymap.ENCODER_HEAD.values())

DIFFUSERS_PARTS = ("unet", "vae", "image_encoder")
# Weight file stems per part: (safetensors stem, pickle stem).
DIFFUSERS_WEIGHTS = {
    "unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "image_encoder": ("model", "pytorch_model"),
}

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A file is not a (readable) Paint-by-Example checkpoint; the message says what was found."""


@dataclass
class PbECheckpoint:
    """A Paint-by-Example model's weights in the canonical layout, plus its architecture.

    ``unet``: LDM UNet keys without prefix (``input_blocks.0.0.weight``); ``vae``: LDM VAE keys
    without prefix (``encoder.conv_in.weight``); ``encoder``: ``ExemplarEncoder.state_dict()`` keys.
    ``source``: where it was read from; ``format``: one of ``Format`` (or ``"model"``);
    ``metadata``: extra strings kept in the single file (training info, provenance).
    """

    unet: StateDict
    vae: StateDict
    encoder: StateDict
    configs: ModelConfigs
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "model"

    def parts(self) -> dict[str, StateDict]:
        return {"unet": self.unet, "vae": self.vae, "encoder": self.encoder}

    def parameter_counts(self) -> dict[str, int]:
        """Element counts per part, ``encoder.tower`` / ``encoder.trained`` split out, and total."""
        counts = {name: _numel(sd) for name, sd in self.parts().items()}
        tower = _numel({k: v for k, v in self.encoder.items() if k.startswith("tower.")})
        counts["encoder.tower"] = tower
        counts["encoder.trained"] = counts["encoder"] - tower
        counts["total"] = counts["unet"] + counts["vae"] + counts["encoder"]
        return counts

    def dtypes(self) -> dict[str, str]:
        """The dtypes each part's floating tensors use, e.g. ``{"unet": "float16"}``."""
        result = {}
        for name, sd in self.parts().items():
            found = sorted(
                {str(t.dtype).removeprefix("torch.") for t in sd.values() if t.is_floating_point()}
            )
            result[name] = "+".join(found) or "none"
        return result


def _numel(state_dict: Mapping[str, Tensor]) -> int:
    return sum(math.prod(t.shape) for t in state_dict.values())


# --------------------------------------------------------------------------------------------
# Low-level readers
# --------------------------------------------------------------------------------------------


def _read_safetensors(path: Path, lazy: bool) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file; ``lazy``: meta tensors from the header."""
    from safetensors import safe_open

    _safetensors_header(path)  # refuses a hostile header size before safetensors allocates it
    try:
        tensors: StateDict = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                if lazy:
                    info = f.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(info.get_dtype(), torch.float32)
                    tensors[key] = torch.empty(info.get_shape(), dtype=dtype, device="meta")
                else:
                    tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for bad headers / sizes
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated or corrupt?): {err}. "
            f"Download or convert it again."
        ) from err
    return tensors, metadata


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals a pickled checkpoint refers to, found without running anything."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # only for the error message: older formats cannot be scanned
        return []


# Globals that training frameworks pickle next to the weights (Lightning callbacks and hyper-
# parameters, numpy scalars in their state). They carry no weights; each is replaced by a harmless
# stub of ours while unpickling, so nothing from the file (or from those libraries) ever runs.
METADATA_GLOBAL_PREFIXES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "numpy.core.multiarray.",
    "numpy._core.multiarray.",
    "numpy.dtypes.",
    "omegaconf.",
)
METADATA_GLOBALS = frozenset(
    {"numpy.dtype", "numpy.ndarray", "_codecs.encode", "argparse.Namespace"}
)


class IgnoredPickleObject:
    """Stands in for a pickled object or function we do not load (see METADATA_GLOBALS)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> IgnoredPickleObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass  # the state is discarded


def _is_metadata_global(name: str) -> bool:
    return name in METADATA_GLOBALS or name.startswith(METADATA_GLOBAL_PREFIXES)


# Limits that keep a hostile or broken pickled checkpoint from exhausting memory. torch stores
# weights uncompressed and memory-maps them; only the pickle (names and structure, under 1 MB for
# the official model) is read into memory, and compressed entries are inflated into memory whole.
MAX_PICKLE_RECORD = 64 * 2**20
MAX_COMPRESSED_TOTAL = 64 * 2**20
# Element sizes of the storage classes a legacy (pre-zip) torch file names.
_LEGACY_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _refuse_oversized(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} was not loaded: {what}. A checkpoint saved by torch never does this; the file is "
        f"corrupt or was made to exhaust memory. Use the .safetensors version of the model."
    )


def _unreadable_ckpt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): "
        f"{type(err).__name__}: {err}. Download it again or use the .safetensors version."
    )


def _check_zip_checkpoint(path: Path) -> None:
    """Refuse a zip checkpoint whose entries claim more than the file holds (a zip bomb)."""
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): {err}. "
            f"Download it again or use the .safetensors version."
        ) from err
    compressed = 0
    records = {entry.filename: entry for entry in entries}
    for entry in entries:
        if entry.filename.endswith(".pkl") and entry.file_size > MAX_PICKLE_RECORD:
            raise _refuse_oversized(
                path, f"its pickle {entry.filename} claims {entry.file_size:,} bytes"
            )
        if entry.compress_type == zipfile.ZIP_STORED:
            if entry.file_size > file_size:
                raise _refuse_oversized(
                    path,
                    f"the entry {entry.filename} claims {entry.file_size:,} bytes in a file of "
                    f"{file_size:,}",
                )
        else:
            compressed += entry.file_size
            if compressed > MAX_COMPRESSED_TOTAL:
                raise _refuse_oversized(
                    path,
                    f"its compressed entries expand to more than {MAX_COMPRESSED_TOTAL:,} bytes "
                    f"({entry.filename} alone to {entry.file_size:,} from "
                    f"{entry.compress_size:,}): a zip bomb",
                )
    pickles = [name for name in records if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        return  # not a torch checkpoint: torch.load refuses it with its own message
    prefix = pickles[0].removesuffix("data.pkl")
    try:
        with zipfile.ZipFile(path) as archive, archive.open(pickles[0]) as data:
            scan = _StorageScan(data)
            scan.load()
    except Exception as err:  # noqa: BLE001 - any failure of the scan means a broken file
        raise _unreadable_ckpt(path, err) from err
    for key, declared in scan.declared.items():
        entry = records.get(f"{prefix}data/{key}")
        stored = entry.file_size if entry is not None else 0
        if declared > stored:
            raise _refuse_oversized(
                path, f"tensor storage {key} declares {declared:,} bytes but stores {stored:,}"
            )


class _ScanStub(IgnoredPickleObject):
    """Stands in for any pickled class during a scan, containers (OrderedDict, list) included."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle.Unpickler):
    """Reads a torch pickle only to collect the tensor bytes it declares, per storage key.

    Nothing from the file runs: every global becomes a stub. torch allocates a legacy file's
    storages at their declared size before reading them, and maps a zip's storages over their
    records, so the declared sizes are checked against what the file stores first.
    """

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.declared: dict[Any, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        size = _LEGACY_ELEMENT_SIZES.get(name, 8) if module == "torch" else 8
        return type(name, (_ScanStub,), {"element_size": size})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, root_key, _, numel = pid[1:5]
            if isinstance(numel, int):
                size = getattr(storage_type, "element_size", 8)
                self.declared[root_key] = max(self.declared.get(root_key, 0), numel * size)
        return IgnoredPickleObject()


class _BoundedReader:
    """A file whose reads never ask for more than what is left (a pickle's length fields lie)."""

    def __init__(self, file: Any, size: int) -> None:
        self.file, self.size = file, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.file.tell())
        return self.file.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.file.readline(max(0, self.size - self.file.tell()))


def _check_legacy_checkpoint(path: Path) -> None:
    """Refuse a legacy (pre-zip) torch file that declares more tensor bytes than it holds."""
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as raw:
            scan = _StorageScan(_BoundedReader(raw, file_size))
            if scan.load() != _LEGACY_MAGIC:
                return  # not a legacy torch file: torch.load refuses it with its own message
            for _ in range(3):  # protocol version, system info, the objects
                scan.load()
    except Exception as err:  # noqa: BLE001 - any failure of the scan means a broken file
        raise _unreadable_ckpt(path, err) from err
    declared = sum(scan.declared.values())
    if declared > file_size:
        raise _refuse_oversized(
            path, f"it declares {declared:,} bytes of tensors but holds only {file_size:,} bytes"
        )


def _read_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``: refuses every pickled object that is not tensor data.

    A Lightning checkpoint also pickles callbacks, hyper-parameters and numpy scalars. Those known
    metadata globals are mapped to a stub (``IgnoredPickleObject``) that ignores its arguments, so
    the file loads with no code from it, or from Lightning or numpy, being run. Any other global
    is refused with its name.
    """
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_checkpoint(path)
    else:
        _check_legacy_checkpoint(path)
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            found = _unsafe_globals(path)
            if not found or not all(_is_metadata_global(name) for name in found):
                raise
            log.info("%s: ignoring pickled training metadata (%s)", path, ", ".join(found))
            stubs = [(IgnoredPickleObject, name) for name in found]
            with torch.serialization.safe_globals(stubs):
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        found = [name for name in _unsafe_globals(path) if not _is_metadata_global(name)]
        named = f" ({', '.join(found[:6])})" if found else ""
        raise CheckpointError(
            f"{path} contains pickled Python objects besides weights{named}; it was not loaded, "
            f"because loading them would run code from the file. Use the .safetensors version of "
            f"this checkpoint (or the diffusers folder), or convert it once with a tool you trust."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            f"Download it again or use the .safetensors version."
        ) from err


def _read_weights_file(path: Path, lazy: bool) -> StateDict:
    if path.suffix == ".safetensors":
        return _read_safetensors(path, lazy)[0]
    obj = _read_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


# safetensors' own limit; the header of the official model (about 1,200 tensors) is ~150 KB.
MAX_SAFETENSORS_HEADER = 100_000_000


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file, its claimed size checked before it is read.

    A header size larger than the file (a text file's first bytes read as a number, a hostile
    file claiming gigabytes) is refused without allocating it.
    """
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"it has only {file_size} bytes")
            size = int.from_bytes(prefix, "little")
            if size <= 1 or size > MAX_SAFETENSORS_HEADER or size > file_size - 8:
                raise ValueError(
                    f"its first 8 bytes claim a {size:,}-byte header, but the file has "
                    f"{file_size:,} bytes and a header may have at most "
                    f"{MAX_SAFETENSORS_HEADER:,}"
                )
            header = json.loads(f.read(size))
    except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeError are ValueErrors
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated, corrupt or another kind of "
            f"file?): {err}. Download or convert it again."
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the .safetensors header is not a JSON object")
    return header


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors header without reading tensors ({} if it has none)."""
    return dict(_safetensors_header(path).get("__metadata__") or {})


def detect_format(path: str | os.PathLike[str]) -> Format:
    """Which layout a path holds (only the name and header are read)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    if p.is_dir():
        if (p / "model_index.json").is_file() or any(
            (p / part).is_dir() for part in DIFFUSERS_PARTS
        ):
            return "diffusers"
        raise CheckpointError(
            f"{p} is a folder without model_index.json, unet/, vae/ or image_encoder/; expected a "
            f"diffusers Paint-by-Example folder or a checkpoint file"
        )
    if p.suffix == ".safetensors":
        metadata = _safetensors_metadata(p)
        return "single-file" if metadata.get("format") == FORMAT_NAME else "official-safetensors"
    if p.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return "official-ckpt"
    raise CheckpointError(
        f"{p} has the extension {p.suffix!r}; expected .safetensors, .ckpt (.pt/.pth/.bin) or a "
        f"diffusers folder"
    )


# --------------------------------------------------------------------------------------------
# Official LDM layout
# --------------------------------------------------------------------------------------------


def _unwrap_lightning(obj: Any, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no tensors under 'state_dict'; {EXPECTED_OFFICIAL}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _top_prefixes(keys: list[str], limit: int = 8) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
    more = f" and {len(prefixes) - limit} more" if len(prefixes) > limit else ""
    return ", ".join(prefixes[:limit]) + more


def describe_foreign_checkpoint(state_dict: Mapping[str, Tensor]) -> str | None:
    """What an LDM-layout state dict is when it is not Paint-by-Example (None when it is)."""
    keys = list(state_dict)
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    in_channels = int(conv_in.shape[1]) if conv_in is not None and conv_in.ndim == 4 else None
    context_dims = {
        int(t.shape[1])
        for k, t in state_dict.items()
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight") and t.ndim == 2
    }
    has_pbe = (
        any(k.startswith("cond_stage_model.mapper.") for k in keys)
        or "learnable_vector" in state_dict
    )
    text_encoder = any(
        k.startswith(
            (
                "cond_stage_model.transformer.text_model.",
                "cond_stage_model.model.",
                "cond_stage_model.transformer.embeddings.token_embedding",
            )
        )
        for k in keys
    )
    if (
        any(k.startswith("conditioner.embedders.") for k in keys)
        or UNET_PREFIX + "label_emb.0.0.weight" in state_dict
        or 2048 in context_dims
    ):
        return "an SDXL checkpoint (conditioner.embedders / label_emb / 2048-wide cross-attention)"
    if has_pbe:
        return None
    if in_channels is None:
        if "conv_in.weight" in state_dict or "time_embedding.linear_1.weight" in state_dict:
            return "a diffusers-layout UNet file (conv_in.*), not a full LDM checkpoint"
        found = _top_prefixes(keys)
        return f"no LDM UNet (model.diffusion_model.input_blocks.*); top-level keys: {found}"
    encoder = "a CLIP text encoder" if text_encoder else "no exemplar encoder"
    if in_channels == 9:
        return (
            f"a Stable Diffusion inpainting checkpoint (9-channel UNet, {encoder}; no "
            f"cond_stage_model.mapper, proj_out or learnable_vector)"
        )
    if in_channels == 4:
        return f"a Stable Diffusion text-to-image checkpoint (4-channel UNet, {encoder})"
    return f"an LDM checkpoint with a {in_channels}-channel UNet and {encoder}"


def _split_official(state_dict: Mapping[str, Tensor], path: Path) -> PbECheckpoint:
    """Official LDM keys -> checkpoint parts; raises naming what was found when it is not PbE."""
    foreign = describe_foreign_checkpoint(state_dict)
    if foreign is not None:
        raise CheckpointError(
            f"{path} is not a Paint-by-Example checkpoint: it is {foreign}; {EXPECTED_OFFICIAL}"
        )
    unet, vae, tower, mapper, head, unknown = {}, {}, {}, {}, {}, []
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet[key.removeprefix(UNET_PREFIX)] = tensor
        elif key.startswith(VAE_PREFIX):
            vae[key.removeprefix(VAE_PREFIX)] = tensor
        elif key.startswith(keymap.OFFICIAL_TOWER_PREFIX):
            tower[key.removeprefix(keymap.OFFICIAL_TOWER_PREFIX)] = tensor
        elif key.startswith(keymap.OFFICIAL_MAPPER_PREFIX + "mapper."):
            mapper[key.removeprefix(keymap.OFFICIAL_MAPPER_PREFIX)] = tensor
        elif key in OFFICIAL_HEAD_KEYS:
            head[key] = tensor
        elif key in IGNORED_OFFICIAL_KEYS or key.startswith(IGNORED_OFFICIAL_PREFIXES):
            continue
        else:
            unknown.append(key)
    missing = [
        name
        for name, part in (
            ("the UNet (model.diffusion_model.*)", unet),
            ("the VAE (first_stage_model.*)", vae),
            ("the CLIP vision tower (cond_stage_model.transformer.*)", tower),
            ("the mapper (cond_stage_model.mapper.*)", mapper),
        )
        if not part
    ]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete Paint-by-Example checkpoint: it lacks {', '.join(missing)}; "
            f"{EXPECTED_OFFICIAL}"
        )
    if unknown:
        raise CheckpointError(
            f"{path} has keys that are not part of a Paint-by-Example checkpoint: "
            f"{keymap._describe_keys(unknown)}; {EXPECTED_OFFICIAL}"
        )
    try:
        encoder = keymap.encoder_from_official(tower, mapper, head)
        configs = ModelConfigs(
            unet=keymap.unet_config_from_ldm(unet),
            vae=keymap.vae_config_from_ldm(vae),
            encoder=keymap.encoder_config_from_weights(encoder),
        )
    except (keymap.KeyMappingError, ConfigError, KeyError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    return PbECheckpoint(unet, vae, encoder, configs, str(path))


def _read_official(path: Path, fmt: Format, lazy: bool) -> PbECheckpoint:
    if fmt == "official-safetensors":
        state_dict, metadata = _read_safetensors(path, lazy)
    else:
        state_dict, metadata = _unwrap_lightning(_read_pickle(path), path), {}
    ckpt = _split_official(state_dict, path)
    ckpt.format = fmt
    ckpt.metadata = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
    return ckpt


def official_state_dict(ckpt: PbECheckpoint) -> StateDict:
    """The checkpoint in the official LDM key layout (transformers-4 CLIP names)."""
    out = {UNET_PREFIX + k: v for k, v in ckpt.unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in ckpt.vae.items()})
    out.update(keymap.encoder_to_official(ckpt.encoder))
    return out


# --------------------------------------------------------------------------------------------
# diffusers folder
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, expected a JSON object")
    return data


def _diffusers_weights(folder: Path, lazy: bool) -> StateDict:
    """The weights of one diffusers part folder (safetensors preferred, fp16 variants, shards)."""
    stem, bin_stem = DIFFUSERS_WEIGHTS[folder.name]
    candidates = [
        folder / f"{stem}.safetensors",
        folder / f"{stem}.fp16.safetensors",
        folder / f"{bin_stem}.bin",
        folder / f"{bin_stem}.fp16.bin",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return _read_weights_file(candidate, lazy)
    for index in (folder / f"{stem}.safetensors.index.json", folder / f"{bin_stem}.bin.index.json"):
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            weights: StateDict = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index} names the shard {shard}, which is missing")
                weights.update(_read_weights_file(folder / shard, lazy))
            return weights
    raise CheckpointError(
        f"{folder} has no weights file; expected one of "
        f"{', '.join(c.name for c in candidates)} (or a sharded .index.json)"
    )


# Keys every stored UNet / VAE config keeps even at their diffusers default values.
_CORE_UNET_KEYS = (
    "sample_size",
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "norm_num_groups",
)
_CORE_VAE_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
)


@cache
def _init_defaults(class_name: str) -> dict[str, Any]:
    import diffusers

    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in params.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }


def canonical_config(raw: Mapping[str, Any], class_name: str) -> dict[str, Any]:
    """A diffusers config reduced to the core keys plus the keys that differ from the defaults."""
    defaults = _init_defaults(class_name)
    core = _CORE_UNET_KEYS if class_name == "UNet2DConditionModel" else _CORE_VAE_KEYS
    out: dict[str, Any] = {}
    for key in core:
        if key in raw or key in defaults:
            value = raw.get(key, defaults.get(key))
            out[key] = list(value) if isinstance(value, tuple) else value
    for key, value in raw.items():
        if key.startswith("_") or key in out or key not in defaults:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if value != defaults[key]:
            out[key] = value
    return out


# The config keys a diffusers folder must agree on with what its weights' shapes show.
_CHECKED_UNET_KEYS = tuple(
    k for k in _CORE_UNET_KEYS if k not in ("sample_size", "attention_head_dim", "norm_num_groups")
)
_CHECKED_VAE_KEYS = tuple(
    k
    for k in _CORE_VAE_KEYS
    if k not in ("down_block_types", "up_block_types", "norm_num_groups", "sample_size",
                 "scaling_factor")  # fmt: skip
)


def _check_config_matches(
    config: Mapping[str, Any], derived: Mapping[str, Any], keys: tuple[str, ...], where: Path
) -> None:
    for key in keys:
        if key in derived and config.get(key) != derived[key]:
            raise CheckpointError(
                f"{where} says {key}={config.get(key)!r} but the weights have {derived[key]!r}"
            )


def _read_diffusers(folder: Path, lazy: bool) -> PbECheckpoint:
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        class_name = index.get("_class_name")
        if class_name and class_name != "PaintByExamplePipeline":
            raise CheckpointError(
                f"{folder} is a diffusers {class_name} folder, not Paint-by-Example; expected "
                f"_class_name PaintByExamplePipeline with unet/, vae/ and image_encoder/"
            )
    present = [p for p in DIFFUSERS_PARTS if (folder / p).is_dir()]
    missing = [p for p in DIFFUSERS_PARTS if p not in present]
    if missing:
        hint = (
            " (it has text_encoder/: a text-to-image pipeline)"
            if (folder / "text_encoder").is_dir()
            else ""
        )
        raise CheckpointError(
            f"{folder} is a diffusers folder without {', '.join(m + '/' for m in missing)}"
            f"{hint}; found {', '.join(p + '/' for p in present) or 'none of the parts'}; "
            f"expected unet/, vae/ and image_encoder/ as in Fantasy-Studio/Paint-by-Example"
        )
    for part in DIFFUSERS_PARTS:
        if not (folder / part / "config.json").is_file():
            raise CheckpointError(f"{folder / part} has no config.json")
    unet_raw = _read_json(folder / "unet" / "config.json")
    vae_raw = _read_json(folder / "vae" / "config.json")
    clip_raw = _read_json(folder / "image_encoder" / "config.json")
    unet_config = canonical_config(unet_raw, "UNet2DConditionModel")
    vae_config = canonical_config(vae_raw, "AutoencoderKL")
    mean, std = CLIP_MEAN, CLIP_STD
    extractor = folder / "feature_extractor" / "preprocessor_config.json"
    if extractor.is_file():
        pre = _read_json(extractor)
        mean = tuple(pre.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(pre.get("image_std", std))  # type: ignore[assignment]
    try:
        unet = keymap.unet_diffusers_to_ldm(_diffusers_weights(folder / "unet", lazy), unet_config)
        vae = keymap.vae_diffusers_to_ldm(_diffusers_weights(folder / "vae", lazy), vae_config)
        encoder = keymap.encoder_from_diffusers(_diffusers_weights(folder / "image_encoder", lazy))
        derived_unet = keymap.unet_config_from_ldm(unet)
        derived_vae = keymap.vae_config_from_ldm(vae)
        encoder_config = keymap.encoder_config_from_clip_config(clip_raw, encoder, mean, std)
    except (keymap.KeyMappingError, ConfigError, KeyError) as err:
        raise CheckpointError(f"{folder}: {err}") from err
    _check_config_matches(unet_config, derived_unet, _CHECKED_UNET_KEYS, folder / "unet")
    _check_config_matches(vae_config, derived_vae, _CHECKED_VAE_KEYS, folder / "vae")
    configs = ModelConfigs(unet_config, vae_config, encoder_config)
    return PbECheckpoint(unet, vae, encoder, configs, str(folder), {}, "diffusers")


def clip_vision_config(encoder: EncoderConfig) -> dict[str, Any]:
    """The transformers ``CLIPVisionConfig`` dict of an encoder (diffusers image_encoder config)."""
    return {
        "architectures": ["PaintByExampleImageEncoder"],
        "model_type": "clip_vision_model",
        "hidden_size": encoder.width,
        "intermediate_size": int(encoder.width * encoder.mlp_ratio),
        "num_hidden_layers": encoder.layers,
        "num_attention_heads": encoder.heads,
        "image_size": encoder.image_size,
        "patch_size": encoder.patch_size,
        "projection_dim": encoder.out_dim,
        "hidden_act": "quick_gelu" if encoder.quick_gelu else "gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
    }


def save_diffusers(
    ckpt: PbECheckpoint, folder: str | os.PathLike[str], vision_model_level: bool = True
) -> Path:
    """Write a diffusers ``PaintByExamplePipeline`` folder (model parts, configs, scheduler).

    diffusers' own ``PaintByExampleImageEncoder`` builds ``(layers + 1) // 5`` mapper blocks; this
    reader takes any depth. ``vision_model_level`` False writes transformers-5 CLIP keys.
    """
    from safetensors.torch import save_file

    from .config import SCHEDULE

    out = Path(folder)
    configs = ckpt.configs
    files = {
        "unet": (
            keymap.unet_ldm_to_diffusers(ckpt.unet, configs.unet),
            {**configs.unet, "_class_name": "UNet2DConditionModel"},
            "diffusion_pytorch_model.safetensors",
        ),
        "vae": (
            keymap.vae_ldm_to_diffusers(ckpt.vae, configs.vae),
            {**configs.vae, "_class_name": "AutoencoderKL"},
            "diffusion_pytorch_model.safetensors",
        ),
        "image_encoder": (
            keymap.encoder_to_diffusers(ckpt.encoder, vision_model_level),
            clip_vision_config(configs.encoder),
            "model.safetensors",
        ),
    }
    for part, (weights, config, name) in files.items():
        atomic_write_text(out / part / "config.json", json.dumps(config, indent=2))
        tensors = _prepare_tensors(weights, None)
        atomic_write(
            out / part / name, lambda tmp, t=tensors: save_file(t, str(tmp), {"format": "pt"})
        )
    scheduler = {
        "_class_name": "PNDMScheduler",
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        **SCHEDULE,
    }
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2))
    size = configs.encoder.image_size
    extractor = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "size": {"shortest_edge": size},
        "image_mean": list(configs.encoder.mean),
        "image_std": list(configs.encoder.std),
        "image_processor_type": "CLIPImageProcessor",
    }
    atomic_write_text(out / "feature_extractor" / "preprocessor_config.json", json.dumps(extractor))
    index = {
        "_class_name": "PaintByExamplePipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2))
    return out


# --------------------------------------------------------------------------------------------
# Single file
# --------------------------------------------------------------------------------------------


def _json_metadata(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{path} is a {FORMAT_NAME} file without the {key!r} metadata")
    try:
        return json.loads(metadata[key])
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON: {err}") from err


def _read_single_file(path: Path, lazy: bool) -> PbECheckpoint:
    tensors, metadata = _read_safetensors(path, lazy)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this version reads {FORMAT_VERSION!r}. "
            f"Update the node pack (or convert the file again)."
        )
    parts: dict[str, StateDict] = {"unet": {}, "vae": {}, "encoder": {}}
    prefixes = {UNET_PREFIX: "unet", VAE_PREFIX: "vae", ENCODER_PREFIX: "encoder"}
    unknown = []
    for key, tensor in tensors.items():
        for prefix, part in prefixes.items():
            if key.startswith(prefix):
                parts[part][key.removeprefix(prefix)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{path} has keys outside {', '.join(prefixes)}: {keymap._describe_keys(unknown)}"
        )
    empty = [prefix + "*" for prefix, part in prefixes.items() if not parts[part]]
    if empty:
        raise CheckpointError(f"{path} has no {', '.join(empty)} weights; the file is incomplete")
    try:
        configs = ModelConfigs(
            unet=_json_metadata(metadata, "unet_config", path),
            vae=_json_metadata(metadata, "vae_config", path),
            encoder=EncoderConfig.from_dict(_json_metadata(metadata, "encoder_config", path)),
        )
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err
    extra = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
    return PbECheckpoint(
        parts["unet"], parts["vae"], parts["encoder"], configs, str(path), extra, "single-file"
    )


def single_file_state_dict(ckpt: PbECheckpoint) -> StateDict:
    """The project single-file key layout (prefixes ``model.diffusion_model.`` etc.)."""
    out = {UNET_PREFIX + k: v for k, v in ckpt.unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in ckpt.vae.items()})
    out.update({ENCODER_PREFIX + k: v for k, v in ckpt.encoder.items()})
    return out


def single_file_metadata(ckpt: PbECheckpoint) -> dict[str, str]:
    """The metadata strings written into the single file (extras first, reserved keys win)."""
    metadata: dict[str, str] = {}
    for key, value in ckpt.metadata.items():
        if key in RESERVED_METADATA:
            continue
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
    metadata.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "unet_config": json.dumps(ckpt.configs.unet, sort_keys=True),
            "vae_config": json.dumps(ckpt.configs.vae, sort_keys=True),
            "encoder_config": json.dumps(ckpt.configs.encoder.to_dict(), sort_keys=True),
        }
    )
    return metadata


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _prepare_tensors(tensors: Mapping[str, Tensor], dtype: torch.dtype | None) -> StateDict:
    """CPU, contiguous, no shared storage (safetensors refuses it); floating tensors cast."""
    out: StateDict = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if tensor.device.type == "meta":
            raise CheckpointError(f"{key} has no data (meta tensor); load the checkpoint fully")
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        ptr = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or ptr in seen or t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_single_file(
    ckpt: PbECheckpoint, path: str | os.PathLike[str], dtype: torch.dtype | str | None = None
) -> Path:
    """Write the project single-file ``.safetensors`` atomically; refuses to overwrite the source.

    ``dtype`` (``torch.float16``/``"fp16"``, ...) casts floating tensors only; None keeps them.
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the single file must end in .safetensors")
    if ckpt.source and same_file(out, Path(ckpt.source)):
        raise CheckpointError(
            f"{out} is the file being converted; write the result to another path"
        )
    tensors = _prepare_tensors(single_file_state_dict(ckpt), _resolve_dtype(dtype))
    metadata = single_file_metadata(ckpt)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata))
    return out


def save_official(
    ckpt: PbECheckpoint, path: str | os.PathLike[str], dtype: torch.dtype | str | None = None
) -> Path:
    """Write the official LDM layout: ``.safetensors``, or ``.ckpt`` as ``{"state_dict": ...}``."""
    out = Path(path)
    if ckpt.source and same_file(out, Path(ckpt.source)):
        raise CheckpointError(f"{out} is the file being converted; write the result elsewhere")
    tensors = _prepare_tensors(official_state_dict(ckpt), _resolve_dtype(dtype))
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(out, lambda tmp: save_file(tensors, str(tmp)))
    else:
        atomic_write(out, lambda tmp: torch.save({"state_dict": tensors}, tmp))
    return out


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _validate(ckpt: PbECheckpoint) -> PbECheckpoint:
    unet_in = ckpt.configs.unet.get("in_channels")
    latent = ckpt.configs.vae.get("latent_channels", 4)
    if unet_in != 2 * latent + 1:
        raise CheckpointError(
            f"{ckpt.source}: the UNet takes {unet_in} input channels; a Paint-by-Example UNet "
            f"takes {2 * latent + 1} (noisy latent, masked-image latent, keep mask)"
        )
    context = ckpt.configs.unet.get("cross_attention_dim")
    if context != ckpt.configs.encoder.out_dim:
        raise CheckpointError(
            f"{ckpt.source}: the UNet's cross-attention width {context} differs from the "
            f"encoder's output width {ckpt.configs.encoder.out_dim}"
        )
    return ckpt


def load_checkpoint(path: str | os.PathLike[str], lazy: bool = False) -> PbECheckpoint:
    """Read any supported format into a ``PbECheckpoint``.

    ``lazy``: safetensors tensors become meta tensors (shapes and dtypes only, for ``info``);
    pickled files are memory-mapped either way.
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "diffusers":
        ckpt = _read_diffusers(p, lazy)
    elif fmt == "single-file":
        ckpt = _read_single_file(p, lazy)
    else:
        ckpt = _read_official(p, fmt, lazy)
    return _validate(ckpt)


def checkpoint_from_model(
    model: PaintByExampleModel, metadata: Mapping[str, str] | None = None
) -> PbECheckpoint:
    """The canonical checkpoint of a built model (tensors shared with the model, not copied)."""
    configs = model.configs
    return PbECheckpoint(
        unet=keymap.unet_diffusers_to_ldm(model.unet.state_dict(), configs.unet),
        vae=keymap.vae_diffusers_to_ldm(model.vae.state_dict(), configs.vae),
        encoder=dict(model.encoder.state_dict()),
        configs=configs,
        source="",
        metadata=dict(metadata or {}),
        format="model",
    )


def model_from_checkpoint(
    ckpt: PbECheckpoint,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> PaintByExampleModel:
    """Build a ``PaintByExampleModel`` holding the checkpoint's weights (no random init pass).

    The weights are copied into freshly allocated parameters (none stay mapped to the file).
    """
    with torch.device("meta"):
        model = PaintByExampleModel(ckpt.configs)
    model.to_empty(device=device or "cpu")
    target = _resolve_dtype(dtype)
    if target is not None:
        model.to(dtype=target)
    parts = {
        model.unet: keymap.unet_ldm_to_diffusers(ckpt.unet, ckpt.configs.unet),
        model.vae: keymap.vae_ldm_to_diffusers(ckpt.vae, ckpt.configs.vae),
        model.encoder: ckpt.encoder,
    }
    for module, weights in parts.items():
        own = module.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{ckpt.source or 'checkpoint'}: weights do not fit the {type(module).__name__} "
                f"built from its config: missing {keymap._describe_keys(missing) or 'none'}; "
                f"unexpected {keymap._describe_keys(unexpected) or 'none'}; shape mismatch "
                f"{keymap._describe_keys(wrong) or 'none'}"
            )
        module.load_state_dict(weights, strict=True)
    return model.eval()


def load_model(
    path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> PaintByExampleModel:
    """``load_checkpoint`` then ``model_from_checkpoint``."""
    return model_from_checkpoint(load_checkpoint(path), device=device, dtype=dtype)
