"""The pack's V3 extension: version check, model folder registration and the node list."""

from __future__ import annotations

import logging
import sys

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
    from .compile import CompileModel
    from .crop_stitch import CropForExemplarEdit, StitchExemplarEdit
    from .encode import ExemplarEncode
    from .guidance import SimilarityGuidance
    from .loader import Loader
    from .lora import LoraLoader
    from .mapper import ExemplarMapper
    from .sampler import ExemplarInpaintSampler

    return [
        Loader,
        ExemplarEncode,
        MaskBezierJitter,
        ExemplarInpaintSampler,
        SimilarityGuidance,
        LoraLoader,
        ExemplarMapper,
        CropForExemplarEdit,
        StitchExemplarEdit,
        CompileModel,
    ]


# How the pack's error types are named to users. ComfyUI imports a pack under its folder's path,
# so ComfyUI's error report (the frontend's dialog, /history, the headless runner) would name
# "<install path>/custom_nodes/<folder>.nodes.checks.PaintByExampleInputError".
ERROR_MODULE_PREFIX = "paint_by_example"


def short_error_names() -> list[str]:
    """Give every exception class of the pack's loaded modules a module name without the install
    path ("paint_by_example.nodes.checks"); returns the classes renamed."""
    root = __name__.rsplit(".", 2)[0]  # "<path>.nodes.extension" -> the pack's own package
    renamed = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(root + "."):
            continue
        short = ERROR_MODULE_PREFIX + name[len(root) :]
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                value.__module__ = short
                renamed.append(f"{short}.{value.__qualname__}")
    return renamed


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
        nodes = node_list()
        short_error_names()
        return nodes
