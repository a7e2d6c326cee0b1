"""Start ComfyUI's ``main.py`` with the extension loading order of ComfyUI after 0.3.64.

    python newer_loader.py COMFYUI/main.py [main.py's arguments]

Newer ComfyUI calls a V3 extension's ``on_load()`` and then its ``get_node_list()``; 0.3.64, the
version the tests have, calls only ``get_node_list()``. Here every ``ComfyExtension`` subclass gets
its ``on_load()`` awaited once before its first ``get_node_list()``, and the call is logged
("newer_loader: on_load ..."), so a test can run the pack on both code paths.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

main_py = Path(sys.argv[1]).resolve()
sys.argv = [str(main_py), *sys.argv[2:]]
sys.path.insert(0, str(main_py.parent))

import comfy.options  # noqa: E402  (main.py's own first lines, before anything parses args)

comfy.options.enable_args_parsing()

from comfy_api.latest import ComfyExtension  # noqa: E402


def _on_load_before_get_node_list(cls, **kwargs) -> None:
    get_node_list = cls.__dict__.get("get_node_list")
    if get_node_list is None:
        return

    async def wrapped(self):
        if not getattr(self, "_newer_loader_on_load_done", False):
            self._newer_loader_on_load_done = True
            print(f"newer_loader: on_load {cls.__module__}.{cls.__name__}", flush=True)
            await self.on_load()
        return await get_node_list(self)

    cls.get_node_list = wrapped


ComfyExtension.__init_subclass__ = classmethod(_on_load_before_get_node_list)
runpy.run_path(str(main_py), run_name="__main__")
