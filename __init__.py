"""Paint-by-Example (native) for ComfyUI.

ComfyUI imports this file by path and calls ``comfy_entrypoint`` (V3 node API). Outside ComfyUI
it does nothing and imports nothing heavy, so ``exemplar_core`` (editor, converter, trainer) can be
used on its own. There is deliberately no ``NODE_CLASS_MAPPINGS``: it would make ComfyUI take the
V1 path and ignore the entry point.
"""

from __future__ import annotations

import importlib.util

# Served by ComfyUI at /extensions/<pack folder>/; the frontend's node help panel reads
# docs/<node id>.md there. Those pages are the nodes' documentation (docs/nodes.md links to them).
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:

    async def comfy_entrypoint():
        from .nodes.extension import PaintByExampleExtension

        return PaintByExampleExtension()
