"""Paint-by-Example checkpoints in every layout they come in, read safely into one container.

Formats (``detect_format`` names): ``official-ckpt`` (the official Lightning ``model.ckpt``),
``official-safetensors`` (the same LDM keys), ``diffusers`` (a ``PaintByExamplePipeline`` folder)
and ``single-file`` (the project's own ``.safetensors``, see ``docs/checkpoint-format.md``).

Modules: ``container`` (``PbECheckpoint``, ``CheckpointError``, prefixes), ``safe_read`` (file
readers that run no code from the file and bound memory), ``detect``, one module per layout
(``official``, ``diffusers``, ``single_file``), ``load`` (file <-> model), ``keymap`` (key tables),
``arch`` (architecture from weight shapes), ``cli`` (the ``convert`` and ``info`` commands).
"""

from .container import CheckpointError, Format, PbECheckpoint
from .detect import describe_foreign_checkpoint, detect_format
from .diffusers import save_diffusers
from .load import checkpoint_from_model, load_checkpoint, load_model, model_from_checkpoint
from .official import official_state_dict
from .single_file import save_single_file

__all__ = [
    "CheckpointError",
    "Format",
    "PbECheckpoint",
    "checkpoint_from_model",
    "describe_foreign_checkpoint",
    "detect_format",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "official_state_dict",
    "save_diffusers",
    "save_single_file",
]
