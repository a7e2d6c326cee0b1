"""Deprecated: use ``exemplar_core.checkpoint`` (kept for a release so old imports keep working).

Every public name this module had, re-exported from where it lives now.
"""

import warnings

from .checkpoint.container import (
    ENCODER_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    RESERVED_METADATA,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    Format,
    PbECheckpoint,
    StateDict,
    Tensor,
)
from .checkpoint.detect import describe_foreign_checkpoint, detect_format
from .checkpoint.diffusers import (
    DIFFUSERS_PARTS,
    DIFFUSERS_WEIGHTS,
    canonical_config,
    clip_vision_config,
    save_diffusers,
)
from .checkpoint.load import (
    checkpoint_from_model,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
)
from .checkpoint.official import (
    EXPECTED_OFFICIAL,
    IGNORED_OFFICIAL_KEYS,
    IGNORED_OFFICIAL_PREFIXES,
    OFFICIAL_HEAD_KEYS,
    official_state_dict,
)
from .checkpoint.safe_read import (
    MAX_COMPRESSED_TOTAL,
    MAX_PICKLE_RECORD,
    MAX_SAFETENSORS_HEADER,
    METADATA_GLOBAL_PREFIXES,
    METADATA_GLOBALS,
    IgnoredPickleObject,
)
from .checkpoint.single_file import save_single_file, single_file_metadata, single_file_state_dict
from .dtypes import DTYPES

warnings.warn(
    "exemplar_core.formats is deprecated and goes in the next release: "
    "use exemplar_core.checkpoint",
    DeprecationWarning,
    stacklevel=2,
)


__all__ = [
    "DIFFUSERS_PARTS",
    "DIFFUSERS_WEIGHTS",
    "DTYPES",
    "ENCODER_PREFIX",
    "EXPECTED_OFFICIAL",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IGNORED_OFFICIAL_KEYS",
    "IGNORED_OFFICIAL_PREFIXES",
    "MAX_COMPRESSED_TOTAL",
    "MAX_PICKLE_RECORD",
    "MAX_SAFETENSORS_HEADER",
    "METADATA_GLOBALS",
    "METADATA_GLOBAL_PREFIXES",
    "OFFICIAL_HEAD_KEYS",
    "RESERVED_METADATA",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "CheckpointError",
    "Format",
    "IgnoredPickleObject",
    "PbECheckpoint",
    "StateDict",
    "Tensor",
    "canonical_config",
    "checkpoint_from_model",
    "clip_vision_config",
    "describe_foreign_checkpoint",
    "detect_format",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "official_state_dict",
    "save_diffusers",
    "save_single_file",
    "single_file_metadata",
    "single_file_state_dict",
]
