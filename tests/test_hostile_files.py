"""Hostile or broken model files are refused before they can exhaust memory; model names cannot
leave the model folders.

Memory is shown bounded by the refusal coming from our checks (their messages), before torch or
safetensors allocate anything; a time limit only rules out a hang. (An address-space limit
cannot be used instead: importing torch with its CUDA libraries reserves more address space than
any useful limit.)
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import struct
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from hostile import write_huge_header

from exemplar_core import checkpoint
from exemplar_core.checkpoint import CheckpointError
from exemplar_core.checkpoint.safe_read import read_pickle, read_weights_file

ROOT = Path(__file__).resolve().parents[1]


def _refused_fast(path: Path, match: str, lazy: bool = False) -> str:
    """Our check's refusal (``match``), not a hang: generous for a loaded machine."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as err:
        checkpoint.load_checkpoint(path, lazy=lazy)
    assert time.perf_counter() - start < 60
    return str(err.value)


# ------------------------------------------------------------------------------ safetensors


@pytest.mark.parametrize("claim", [8_000_000_000, 50_000_000])
def test_safetensors_header_claiming_more_than_the_file_is_refused(tmp_path, claim):
    path = tmp_path / "claims.safetensors"
    path.write_bytes(claim.to_bytes(8, "little") + b'{"__metadata__": {}}')
    message = _refused_fast(path, f"{claim:,}-byte header", lazy=True)
    assert "has 28 bytes" in message


def test_safetensors_weights_file_in_a_diffusers_folder_is_checked_too(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "PaintByExamplePipeline"}')
    for part in ("unet", "vae", "image_encoder"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text("{}")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    write_huge_header(weights)
    with pytest.raises(CheckpointError, match="8,000,000,000-byte header"):
        read_weights_file(weights, lazy=False)


# ------------------------------------------------------------------------------ zip .ckpt


def _torch_zip(path: Path, tensors: dict[str, torch.Tensor]) -> list[zipfile.ZipInfo]:
    torch.save({"state_dict": tensors}, path)
    with zipfile.ZipFile(path) as archive:
        return [(info, archive.read(info.filename)) for info in archive.infolist()]


@pytest.mark.parametrize(
    ("entry_name", "expected"),
    [("data.pkl", "its pickle ok/data.pkl claims 83,886,"), ("data/0", "a zip bomb")],
)
def test_zip_bomb_ckpt_is_refused_before_it_is_inflated(tmp_path, entry_name, expected):
    entries = _torch_zip(tmp_path / "ok.ckpt", {"w": torch.zeros(4)})
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w") as archive:
        for info, data in entries:
            if info.filename.endswith(entry_name):
                # The real bytes, then 80 MB of zeros deflated: torch would inflate the whole
                # entry into memory. The file itself is well under 1 MB.
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(entry, "w", force_zip64=True) as out:
                    out.write(data)
                    chunk = bytes(1 << 20)
                    for _ in range(80):
                        out.write(chunk)
            else:
                archive.writestr(info, data)
    assert bomb.stat().st_size < 1 << 20
    message = _refused_fast(bomb, "was not loaded")
    assert expected in message


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_size_checks_pass_what_torch_save_writes(tmp_path, zip_format):
    # model.state_dict() is an OrderedDict with a _metadata attribute; Lightning adds nested
    # containers, numpy scalars and shared storages.
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    state = model.state_dict()
    state["tied"] = state["0.weight"][1:]  # a view into another tensor's storage
    checkpoint = {
        "state_dict": state,
        "epoch": 3,
        "loops": [collections.OrderedDict(a={1, 2})],
        "hparams": {"lr": 1e-5, "sizes": (1, 2)},
    }
    path = tmp_path / "model.ckpt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    loaded = read_pickle(path)
    assert list(loaded["state_dict"]) == list(state)
    assert torch.equal(loaded["state_dict"]["tied"], state["0.weight"][1:])


def test_zip_ckpt_declaring_more_tensor_bytes_than_it_stores_is_refused(tmp_path):
    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 0, (10**10,), (1,), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return (
                ("storage", torch.FloatStorage, "0", "cpu", 10**10)
                if isinstance(obj, Storage)
                else None
            )

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"state_dict": {"w": Tensor()}})
    entries = _torch_zip(tmp_path / "ok.ckpt", {"w": torch.zeros(4)})
    path = tmp_path / "claims.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(
                info, buffer.getvalue() if info.filename.endswith("data.pkl") else data
            )
    _refused_fast(path, "declares 40,000,000,000 bytes but stores 16")


# ------------------------------------------------------------------------------ legacy .ckpt


def _legacy_ckpt(path: Path, declared_numel: int) -> None:
    """A pre-zip torch file (as torch < 1.6 wrote it) with one float storage of 4 elements whose
    pickle declares ``declared_numel``."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 0, (4,), (1,), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, "0", "cpu", declared_numel, None)
            return None

    buffer = io.BytesIO()
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
        pickle.dump(header, buffer, protocol=2)
    Pickler(buffer, protocol=2).dump({"state_dict": {"w": Tensor()}})
    pickle.dump(["0"], buffer, protocol=2)
    buffer.write(struct.pack("<q", 4) + struct.pack("<4f", 1, 2, 3, 4))
    path.write_bytes(buffer.getvalue())


def test_legacy_ckpt_of_honest_size_still_loads(tmp_path):
    path = tmp_path / "legacy.ckpt"
    _legacy_ckpt(path, 4)
    loaded = read_pickle(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_legacy_ckpt_declaring_huge_storage_is_refused_before_torch_allocates(tmp_path):
    path = tmp_path / "legacy.ckpt"
    _legacy_ckpt(path, 10**10)  # torch would allocate 40 GB before reading 16 bytes
    _refused_fast(path, "declares 40,000,000,000 bytes of tensors but holds only")


# ------------------------------------------------------------------------------ model folders


@pytest.fixture()
def model_folders(tmp_path, monkeypatch):
    """nodes/folders.py over a stand-in for ComfyUI's folder_paths (the real one is exercised by
    the host tests): models/paint_by_example holds a file and a link to a shared drive."""
    models = tmp_path / "ComfyUI" / "models"
    folder = models / "paint_by_example"
    folder.mkdir(parents=True)
    (folder / "own.safetensors").write_bytes(b"own")
    shared = tmp_path / "shared-drive"
    shared.mkdir()
    (shared / "big.safetensors").write_bytes(b"shared")
    (folder / "linked.safetensors").symlink_to(shared / "big.safetensors")
    (tmp_path / "ComfyUI" / "models" / "secret.safetensors").write_bytes(b"outside")
    (folder / "secret.safetensors").write_bytes(b"inside, same name")

    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(models)
    fake.folder_names_and_paths = {}
    fake.filename_list_cache = {}
    fake.get_folder_paths = lambda key: list(fake.folder_names_and_paths[key][0])

    def get_filename_list(key):
        roots, extensions = fake.folder_names_and_paths[key]
        names = []
        for root in roots:
            for dirpath, _, files in os.walk(root, followlinks=True):
                names += [
                    os.path.relpath(os.path.join(dirpath, f), root)
                    for f in files
                    if os.path.splitext(f)[1] in extensions
                ]
        return sorted(names)

    fake.get_filename_list = get_filename_list
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    spec = importlib.util.spec_from_file_location("pbe_test_folders", ROOT / "nodes/folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PACK_MODELS_DIR", tmp_path / "no-pack-models")
    module.register()
    return module, folder


def test_a_link_to_a_shared_drive_is_listed_and_read_through_the_model_folder(model_folders):
    folders, folder = model_folders
    assert "linked.safetensors" in folders.list_models()
    resolved = folders.resolve("linked.safetensors")
    assert resolved == str(folder / "linked.safetensors")
    assert Path(resolved).read_bytes() == b"shared"


@pytest.mark.parametrize("name", ["../secret.safetensors", "a/../../secret.safetensors"])
def test_names_that_climb_out_of_the_model_folder_are_refused(model_folders, name):
    folders, _ = model_folders
    # Before, "../secret.safetensors" quietly became the folder's own secret.safetensors.
    with pytest.raises(folders.ModelNotFoundError, match="points outside"):
        folders.resolve(name)


def test_absolute_model_names_are_refused(model_folders, tmp_path):
    folders, folder = model_folders
    with pytest.raises(folders.ModelNotFoundError, match="points outside"):
        folders.resolve(str(folder / "own.safetensors"))
    assert folders.resolve("own.safetensors") == str(folder / "own.safetensors")
