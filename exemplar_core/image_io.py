"""Reading and writing images and masks for the CLI and the trainer (any mode PIL reads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .files import DestinationError, atomic_write


class ImageError(ValueError):
    """An image file that is missing, unreadable or unusable."""


def _open(path: str | os.PathLike[str], what: str) -> Image.Image:
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{what} {p} is a folder; give an image file (.png, .jpg, .webp, ...)")
    if not p.is_file():
        raise ImageError(f"{what} file not found: {p}")
    try:
        image = Image.open(p)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"{what} file {p} is not a readable image ({exc}); expected a PNG, JPEG, WebP or "
            f"another image format PIL reads"
        ) from exc
    return image


def _to_float_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array [H, W, C] in 0..1 (16-bit and float modes kept precise)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0)[..., None]
    if image.mode == "I":
        array = np.asarray(image, dtype=np.int64).astype(np.float32)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array / peak, 0, 1)[..., None]
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1)[..., None]
    if image.mode in ("1", "L", "LA", "RGB", "RGBA"):
        array = np.asarray(image.convert("L") if image.mode == "1" else image, dtype=np.float32)
        array = array / 255.0
        return array[..., None] if array.ndim == 2 else array
    return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0


def load_rgb(path: str | os.PathLike[str], what: str = "image") -> torch.Tensor:
    """Image file -> [1, 3, H, W] float 0..1. Greyscale is replicated, alpha is dropped."""
    return _rgb_tensor(_to_float_array(_open(path, what)))


def load_exemplar(path: str | os.PathLike[str], what: str = "exemplar") -> torch.Tensor:
    """Exemplar file -> [1, 3, H, W] float 0..1, or [1, 4, H, W] when it has an alpha that is
    not fully opaque (many PNGs carry an opaque one: dropped). Whether that alpha marks an object
    (then it is the exemplar mask) is ``preprocess.alpha_object_mask``'s to decide and report."""
    array = _to_float_array(_open(path, what))
    if array.shape[-1] not in (2, 4) or array[..., -1].min() >= 1.0:
        return _rgb_tensor(array)
    alpha = torch.from_numpy(np.ascontiguousarray(array[..., -1]))
    return torch.cat([_rgb_tensor(array[..., :-1]), alpha[None, None]], dim=1)


def _rgb_tensor(array: np.ndarray) -> torch.Tensor:
    """[H, W, C] float 0..1 (C = 1 grey, 2 grey + alpha, 3 or 4) -> [1, 3, H, W]: grey is
    replicated, alpha is dropped."""
    if array.shape[-1] in (1, 2):
        array = np.repeat(array[..., :1], 3, axis=-1)
    else:
        array = array[..., :3]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]


def load_mask(path: str | os.PathLike[str], what: str = "mask") -> torch.Tensor:
    """Mask file -> edit mask [1, 1, H, W] float 0..1 (white = edit).

    Colour masks use their luminance. A mask whose colour is uniform but whose alpha varies
    (a cut-out saved as a transparent PNG) uses the alpha instead, transparent = edit, as ComfyUI's
    LoadImage does.
    """
    array = _to_float_array(_open(path, what))
    channels = array.shape[-1]
    if channels in (2, 4):
        colour, alpha = array[..., :-1], array[..., -1]
        if np.ptp(colour) < 1e-6 and np.ptp(alpha) > 0:
            return torch.from_numpy(1.0 - alpha)[None, None].float()
        array = colour
    if array.shape[-1] == 3:
        grey = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        grey = array[..., 0]
    return torch.from_numpy(np.ascontiguousarray(grey))[None, None].float()


def save_rgb(image: torch.Tensor, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """image: [1, 3, H, W] or [3, H, W] float 0..1 -> an 8-bit PNG/JPEG/WebP at ``path``.

    Refuses to replace an existing file unless ``overwrite``; writes atomically (files.py).
    """
    p = Path(path)
    return save_image(Image.fromarray(to_uint8(image)), p, _format_for(p), overwrite)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """image: [1, C, H, W] or [C, H, W] float 0..1 -> [H, W, C] uint8 (rounded, clamped)."""
    if image.ndim == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round()
    return array.astype(np.uint8)


def save_image(
    image: Image.Image, path: Path, image_format: str | None = None, overwrite: bool = False
) -> Path:
    """A PIL image written atomically at ``path`` (format from the suffix unless given)."""
    image_format = image_format or _format_for(path)
    try:
        return atomic_write(
            path, lambda tmp: image.save(tmp, format=image_format), overwrite=overwrite
        )
    except DestinationError as err:
        raise ImageError(str(err)) from err


def check_output_name(path: str | os.PathLike[str]) -> None:
    """Refuse an image name whose suffix names no format we write (before any work is done)."""
    _format_for(Path(path))


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if suffix not in formats:
        raise ImageError(
            f"cannot write {path}: the name must end in .png, .jpg, .jpeg or .webp "
            f"(got {path.suffix or 'no extension'!r})"
        )
    return formats[suffix]
