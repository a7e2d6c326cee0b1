"""Full-size ViT-L/14 model files for the Exemplar Mapper's tests, random but seeded (no download).

``write_vit_l_pair`` writes a Paint-by-Example single file (a tiny UNet with 768-wide
cross-attention, a tiny VAE, the published exemplar encoder: OpenAI CLIP ViT-L/14 tower + mapper)
and the SAME tower as a stock ``clip_vision`` file that ComfyUI's CLIPVisionLoader detects as
ViT-L/14. Both in fp16 (half the size; ComfyUI keeps CLIP Vision weights in fp16 anyway). The
tensors are built once per process and reused for every pair written.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

SEED = 19
PBE_FOLDER = "paint_by_example"
CLIP_FOLDER = "clip_vision"


@functools.cache
def _pbe_file() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the Paint-by-Example single file, fp16."""
    from exemplar_core.checkpoint import checkpoint_from_model
    from exemplar_core.checkpoint.container import prepare_tensors
    from exemplar_core.checkpoint.single_file import single_file_metadata, single_file_state_dict
    from exemplar_core.config import EncoderConfig
    from exemplar_core.model import ModelConfigs, PaintByExampleModel

    configs = dataclasses.replace(
        ModelConfigs.tiny(cross_attention_dim=768), encoder=EncoderConfig()
    )
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = PaintByExampleModel(configs).eval()
        ckpt = checkpoint_from_model(model, metadata={"purpose": "Exemplar Mapper host test"})
        return prepare_tensors(single_file_state_dict(ckpt), torch.float16), single_file_metadata(
            ckpt
        )


def _clip_file(pbe: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The PbE file's tower in the stock clip_vision layout, with a random (seeded) projection."""
    from exemplar_core.checkpoint.clip_vision import clip_vision_state_dict
    from exemplar_core.checkpoint.container import ENCODER_PREFIX, prepare_tensors

    encoder = {
        k.removeprefix(ENCODER_PREFIX): v for k, v in pbe.items() if k.startswith(ENCODER_PREFIX)
    }
    width = encoder["tower.ln_post.weight"].shape[0]
    generator = torch.Generator().manual_seed(SEED)
    projection = (torch.randn(768, width, generator=generator) * width**-0.5).half()
    return prepare_tensors(clip_vision_state_dict(encoder, projection), None)


def write_vit_l_pair(models_root: Path, pbe_name: str, clip_name: str) -> None:
    """Write ``models_root/paint_by_example/<pbe_name>`` and ``models_root/clip_vision/<clip_name>``
    (ViT-L/14 tower shared by both; about 0.75 GB and 0.6 GB)."""
    from safetensors.torch import save_file

    pbe, metadata = _pbe_file()
    for folder in (PBE_FOLDER, CLIP_FOLDER):
        (models_root / folder).mkdir(parents=True, exist_ok=True)
    save_file(pbe, str(models_root / PBE_FOLDER / pbe_name), metadata)
    save_file(_clip_file(pbe), str(models_root / CLIP_FOLDER / clip_name))
