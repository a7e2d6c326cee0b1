"""The ``paint_by_example`` model folder: registration and listing.

Models go in ``ComfyUI/models/paint_by_example/`` or in any folder named under a
``paint_by_example:`` key in ``extra_model_paths.yaml``. The pack's own ``models/`` folder (where an
embedded default model may be shipped) is listed too when it exists. Single files are listed with
an extension filter; a diffusers folder (a directory holding ``model_index.json``) is listed by its
folder name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths

log = logging.getLogger(__name__)

FOLDER_KEY = "paint_by_example"
EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"}
PACK_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class ModelNotFoundError(FileNotFoundError):
    """A model name that no registered folder holds."""


def default_folder() -> str:
    return os.path.join(folder_paths.models_dir, FOLDER_KEY)


def register() -> None:
    """Register the key with an extension filter, keeping paths from extra_model_paths.yaml."""
    paths: list[str] = []
    existing = folder_paths.folder_names_and_paths.get(FOLDER_KEY)
    if existing is not None:
        paths.extend(existing[0])
    for path in (default_folder(), str(PACK_MODELS_DIR)):
        if path == str(PACK_MODELS_DIR) and not PACK_MODELS_DIR.is_dir():
            continue
        if path not in paths:
            paths.append(path)
    folder_paths.folder_names_and_paths[FOLDER_KEY] = (paths, set(EXTENSIONS))
    folder_paths.filename_list_cache.pop(FOLDER_KEY, None)


def search_paths() -> list[str]:
    if FOLDER_KEY not in folder_paths.folder_names_and_paths:
        register()
    return folder_paths.get_folder_paths(FOLDER_KEY)


def _diffusers_folders(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if "model_index.json" in filenames:
            found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
            dirnames[:] = []  # its sub-folders belong to it
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def list_models() -> list[str]:
    """Model names for the loader's combo: single files and diffusers folders, sorted."""
    names: set[str] = set()
    folders: set[str] = set()
    for root in search_paths():
        if os.path.isdir(root):
            folders.update(f for f in _diffusers_folders(root) if f != ".")
    files = folder_paths.get_filename_list(FOLDER_KEY)
    for name in files:
        normalized = name.replace(os.sep, "/")
        if not any(normalized.startswith(folder + "/") for folder in folders):
            names.add(normalized)
    names.update(folders)
    return sorted(names)


def _leaves_folder(name: str) -> bool:
    """True for a name that points outside the folder it is looked up in ('..', absolute)."""
    parts = name.replace("\\", "/").split("/")
    return os.path.isabs(name) or ".." in parts or bool(os.path.splitdrive(name)[0])


def resolve(name: str) -> str:
    """Full path of a listed model (file or diffusers folder); raises with the folders to use.

    Links inside a model folder are followed, as ComfyUI's own loaders do: users link models
    from a shared drive, and the pack only ever reads these folders, never writes into them.
    A name that leaves the folder by itself ('..', an absolute path) is refused rather than
    quietly cut back to a file of the same name inside it: names come from the loader's list.
    """
    if _leaves_folder(name):
        raise ModelNotFoundError(
            f"model name {name!r} points outside the Paint-by-Example model folders ('..' or an "
            f"absolute path); choose a name from the list, i.e. a file or diffusers folder inside "
            f"{default_folder()} or another folder under 'paint_by_example:' in "
            f"extra_model_paths.yaml"
        )
    relative = os.path.normpath(name)
    for root in search_paths():
        candidate = os.path.join(root, relative)
        if os.path.isfile(candidate) or os.path.isfile(os.path.join(candidate, "model_index.json")):
            return candidate
    raise ModelNotFoundError(missing_message(name))


def missing_message(name: str) -> str:
    where = ", ".join(search_paths()) or default_folder()
    return (
        f"Paint-by-Example model {name!r} was not found. Put the checkpoint (.safetensors, the "
        f"official .ckpt, or a diffusers folder) in {default_folder()} (searched: {where}), or add "
        f"a '{FOLDER_KEY}:' entry to extra_model_paths.yaml, then refresh. Nothing is downloaded "
        f"automatically."
    )


PACK_EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "example_inputs"
EXAMPLE_PREFIX = "pbe_example_"


def install_example_inputs() -> list[str]:
    """Copy the bundled example images into ComfyUI's input folder as ``pbe_example_*.png``, the
    names the templates load, so they run as soon as the pack is installed. A file of that name
    that is already there is left as it is (never overwritten); returns the names copied.

    The images live in ``example_inputs/``, a folder name ComfyUI does not read as a template
    folder (``examples/`` would shadow ``workflows/``: app/custom_node_manager.py)."""
    if not PACK_EXAMPLES_DIR.is_dir():
        return []
    target = Path(folder_paths.get_input_directory())
    copied = []
    for source in sorted(PACK_EXAMPLES_DIR.glob("*.png")):
        destination = target / f"{EXAMPLE_PREFIX}{source.name}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            out = open(destination, "xb")  # exclusive: a user's file is never replaced
        except FileExistsError:
            continue
        except OSError as err:  # a read-only input folder must not stop the pack from loading
            log.warning("Paint-by-Example: cannot copy %s into %s: %s", source.name, target, err)
            continue
        try:
            with out:
                out.write(source.read_bytes())
        except OSError as err:
            destination.unlink(missing_ok=True)  # our own partial copy, not a user's file
            log.warning("Paint-by-Example: cannot copy %s into %s: %s", source.name, target, err)
            continue
        copied.append(destination.name)
    return copied
