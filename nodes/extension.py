"""The pack's V3 extension: version check, model folder registration and the node list."""

from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from . import folders

log = logging.getLogger(__name__)

# Oldest ComfyUI this pack is tested against (also `requires-comfyui` in pyproject.toml).
MIN_COMFYUI_VERSION = (0, 3, 64)


def comfyui_version() -> tuple[int, ...] | None:
    try:
        from comfyui_version import __version__
    except ImportError:
        return None
    try:
        return tuple(int(part) for part in __version__.split(".")[:3])
    except ValueError:
        return None


def check_comfyui_version() -> None:
    version = comfyui_version()
    if version is not None and version < MIN_COMFYUI_VERSION:
        wanted = ".".join(map(str, MIN_COMFYUI_VERSION))
        have = ".".join(map(str, version))
        raise RuntimeError(
            f"Paint-by-Example nodes need ComfyUI {wanted} or newer (this is {have}): update "
            f"ComfyUI, or install an older release of this pack"
        )


def node_list() -> list[type[io.ComfyNode]]:
    from .bezier_mask import MaskBezierJitter
    from .encode import ExemplarEncode
    from .guidance import SimilarityGuidance
    from .loader import Loader
    from .sampler import ExemplarInpaintSampler

    return [
        Loader,
        ExemplarEncode,
        MaskBezierJitter,
        ExemplarInpaintSampler,
        SimilarityGuidance,
    ]


class PaintByExampleExtension(ComfyExtension):
    """The pack as ComfyUI loads it. Start-up work runs from whichever hook the running ComfyUI
    calls first: newer versions call ``on_load`` and then ``get_node_list``; 0.3.64 never calls
    ``on_load`` (its ``nodes.load_custom_node`` calls only ``get_node_list``), so the templates'
    example inputs must also be installed from there."""

    def __init__(self) -> None:
        self._started = False

    def _start_up(self) -> None:
        if self._started:
            return
        check_comfyui_version()
        folders.register()
        copied = folders.install_example_inputs()
        if copied:
            log.info("Paint-by-Example: example inputs for the templates: %s", ", ".join(copied))
        self._started = True

    async def on_load(self) -> None:
        self._start_up()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        self._start_up()
        return node_list()
