"""Harness for the host tests: a real ComfyUI (COMFYUI_PATH) in-process or as a server.

In-process: ComfyUI's root goes first on sys.path (this repo's ``nodes/`` folder must never
shadow ComfyUI's top-level ``nodes`` module), CPU mode is set before ``comfy.model_management`` is
imported, and the pack is loaded the way ComfyUI loads it: by file path, as a package under a
mangled module name (``nodes.load_custom_node``).

Server: ``main.py --cpu`` on 127.0.0.1 with an ``extra_model_paths.yaml`` whose ``custom_nodes``
entry names a folder holding a link to this repo, and whose ``paint_by_example`` entry names the
test's model folder.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # bench/ and workflows/build.py import this module too
    sys.path.append(str(TESTS_DIR))
from ports import free_port  # noqa: E402 (tests/ports.py, found through the line above)

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
SKIP_REASON = (
    "COMFYUI_PATH is not set: point it at a ComfyUI checkout (COMFYUI_PATH=/path/to/ComfyUI) "
    "to run the host tests"
)
REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_NAME = "tiny-pbe.safetensors"


def workflows_build() -> ModuleType:
    """``workflows/build.py`` (the templates' single source), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "workflows_build", REPO_ROOT / "workflows/build.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# Tiny checkpoint in the project's single-file format
# ------------------------------------------------------------------------------------------


def tiny_model(seed: int = 1234, deterministic_vae: bool = True):
    """A seeded tiny PaintByExampleModel (top-level ``exemplar_core``).

    deterministic_vae: the VAE's log-variance is pinned to -30, so the posterior sample equals
    its mean. ComfyUI encodes the posterior mean, the standalone editor samples it; with a random
    tiny VAE the two would differ by O(1), with a trained VAE by very little.
    """
    from exemplar_core.model import ModelConfigs, PaintByExampleModel

    torch.manual_seed(seed)
    model = PaintByExampleModel(ModelConfigs.tiny()).eval()
    if deterministic_vae:
        latent = model.configs.vae["latent_channels"]
        with torch.no_grad():
            model.vae.quant_conv.weight[latent:] = 0
            model.vae.quant_conv.bias[latent:] = -30.0
    return model


def save_tiny_checkpoint(path: Path, model=None) -> Path:
    """Write the tiny model to ``path`` with exemplar_core.checkpoint.save_single_file."""
    from exemplar_core.checkpoint import checkpoint_from_model, save_single_file

    model = model if model is not None else tiny_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_single_file(checkpoint_from_model(model, metadata={"purpose": "host test"}), path)
    return path


# ------------------------------------------------------------------------------------------
# In-process host
# ------------------------------------------------------------------------------------------


@dataclass
class Host:
    """ComfyUI imported in this process with the pack loaded."""

    package: str  # the pack's module name in sys.modules
    nodes: ModuleType  # ComfyUI's top-level ``nodes``

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def module(self, name: str) -> ModuleType:
        """A pack module, e.g. ``module("nodes.sampler")`` or ``module("exemplar_core.crop")``."""
        return importlib.import_module(f"{self.package}.{name}")

    def run(self, node_id: str, **inputs) -> tuple:
        """Execute a V3 node's ``execute`` and return its outputs as a tuple, under
        ``torch.inference_mode()`` as ComfyUI's executor runs every node (execution.py). Without
        it autograd would keep every activation alive (2 GB more at SD1.5 size)."""
        import torch

        with torch.inference_mode():
            out = self.node(node_id).execute(**inputs)
        return tuple(out.args)


def _comfyui_first_on_path() -> None:
    root = str(Path(COMFYUI_PATH).resolve())
    while root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(root):
        del sys.modules["nodes"]  # something imported the wrong `nodes`: drop it


def load_host(models_dir: Path, cpu: bool = True) -> Host:
    """Import ComfyUI (CPU unless ``cpu`` is False, for the GPU benchmarks) and load this pack;
    ``models_dir`` is registered for our key the way an extra_model_paths.yaml entry would be
    (before the pack registers its folder)."""
    _comfyui_first_on_path()
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import folder_paths

    folder_paths.add_model_folder_path("paint_by_example", str(models_dir))
    import nodes

    pack_dir = str(REPO_ROOT)
    if not asyncio.run(nodes.load_custom_node(pack_dir, module_parent="custom_nodes")):
        raise RuntimeError(f"ComfyUI could not load the pack from {pack_dir}; see the log")
    package = pack_dir.replace(".", "_x_")
    return Host(package=package, nodes=nodes)


# ------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------


PACK_FOLDER = "paint-by-example"  # the folder name the README's install command gives
NEWER_LOADER = Path(__file__).resolve().parent / "newer_loader.py"
BUILT_HERE = {
    ".git",
    ".venv",
    ".ci-venv",
    "out",
    "runs",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}


def pack_files() -> list[str]:
    """The pack's files as a clone has them: what git tracks plus new files it does not ignore
    (so uncommitted work is tested too); without git, every file but what is built here."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [name for name in listed.split("\0") if name and (REPO_ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [
            str(path.relative_to(REPO_ROOT))
            for path in REPO_ROOT.rglob("*")
            if path.is_file() and not BUILT_HERE & set(path.relative_to(REPO_ROOT).parts)
        ]


def install_pack(custom_nodes: Path, name: str = PACK_FOLDER) -> Path:
    """A copy of the pack at ``custom_nodes/<name>``, as ``git clone`` into ComfyUI's
    custom_nodes folder leaves it (no link back to this checkout, nothing built here)."""
    target = custom_nodes / name
    for relative in pack_files():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, destination)
    return target


def write_extra_paths(base: Path, models_dir: Path) -> Path:
    """extra_model_paths.yaml naming a custom_nodes folder (holding a link to this repo) and
    the test's model folder."""
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    link = custom / "paint-by-example"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(
        "pbe_test:\n"
        f"    base_path: {base}\n"
        "    custom_nodes: custom_nodes\n"
        f"    paint_by_example: {models_dir}\n"
    )
    return yaml


def comfyui_command(
    base_directory: Path, yaml: Path | None, port: int, *extra: str, newer_loader: bool = False
) -> list[str]:
    """``main.py --cpu`` on 127.0.0.1 with its folders under ``base_directory``. newer_loader:
    start it through newer_loader.py, which loads extensions as ComfyUI after 0.3.64 does."""
    (base_directory / "custom_nodes").mkdir(parents=True, exist_ok=True)  # start-up lists it
    launcher = [str(NEWER_LOADER)] if newer_loader else []
    paths = ["--extra-model-paths-config", str(yaml)] if yaml is not None else []
    return [
        sys.executable,
        *launcher,
        str(Path(COMFYUI_PATH) / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",
        "--base-directory",
        str(base_directory),
        *paths,
        *extra,
    ]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path
    base_directory: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET, without raising on 4xx/5xx."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get_content_type(), err.read()

    @property
    def input_directory(self) -> Path:
        return self.base_directory / "input"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def add_model_files(server: Server, models: Path) -> None:
    """Put every file under ``models`` (laid out as ComfyUI's ``models/`` folder) into the
    running install's models folder, as a user adds files while ComfyUI runs (it lists a folder
    afresh when it changed). Hard links where possible: the files are large."""
    for source in sorted(p for p in models.rglob("*") if p.is_file()):
        destination = server.base_directory / "models" / source.relative_to(models)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)


class StartError(RuntimeError):
    """ComfyUI did not start: why (``reason``), then the end of its log."""

    def __init__(self, reason: str, log: str) -> None:
        super().__init__(f"{reason}:\n{log[-4000:]}")
        self.reason = reason
        self.last_line = next((line for line in reversed(log.splitlines()) if line.strip()), "")

    def summary(self) -> str:
        """One line: the reason and the log's last line (usually the error that stopped it)."""
        return f"{self.reason}: {self.last_line.strip()}" if self.last_line else self.reason


def launch(command: list[str], base_directory: Path, log_path: Path, timeout: float) -> Server:
    """Start ``command`` and wait until the server answers ``/system_stats``; raises
    StartError when it exits or does not answer within ``timeout`` s."""
    port = int(command[command.index("--port") + 1])
    log_file = open(log_path, "w")  # noqa: SIM115 (kept open for the server's lifetime)
    # Inductor (the Compile Model tests) as the unit tests set it: no pool of compile workers
    # and scalar C++ kernels, which gcc builds in about half the time on two busy cores.
    quick_inductor = {"TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_VEC_ISA_OK": "0"}
    env = {**quick_inductor, **os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(
        command, cwd=str(base_directory), stdout=log_file, stderr=subprocess.STDOUT, env=env
    )
    server = Server(process, f"http://127.0.0.1:{port}", log_path, base_directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError("ComfyUI exited during start-up", server.log())
        try:
            server.get("/system_stats")
            return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise StartError(f"ComfyUI did not answer within {timeout} s", server.log())


def start_server(base: Path, models_dir: Path, timeout: float = 120.0) -> Server:
    """A server with the pack linked in through extra_model_paths.yaml and the test's models."""
    yaml = write_extra_paths(base, models_dir)
    command = comfyui_command(base / "comfy", yaml, free_port())
    return launch(command, base / "comfy", base / "comfyui.log", timeout)


def start_user_install(base: Path, newer_loader: bool = False, timeout: float = 120.0) -> Server:
    """ComfyUI as a user's install runs it: a copy of the pack in ``custom_nodes/``, an empty
    input folder, no extra_model_paths.yaml, nothing pre-copied."""
    comfy = base / "ComfyUI"
    install_pack(comfy / "custom_nodes")
    (comfy / "input").mkdir(parents=True, exist_ok=True)
    command = comfyui_command(comfy, None, free_port(), newer_loader=newer_loader)
    return launch(command, comfy, base / "comfyui.log", timeout)
