"""Files the pack writes: the user's umask decides who can read them, and writes are atomic."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from permissions import bound_by_permissions

from exemplar_core import checkpoint
from exemplar_core.files import DestinationError, atomic_write, check_destination
from exemplar_core.image_io import save_rgb

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_models_and_images_are_created_with_the_users_umask(
    tiny_model, tmp_path, umask, mask, expected
):
    ckpt = checkpoint.checkpoint_from_model(tiny_model)
    umask(mask)
    written = [
        checkpoint.save_single_file(ckpt, tmp_path / "single.safetensors"),
        save_rgb(torch.zeros(1, 3, 4, 4), tmp_path / "image.png"),
    ]
    folder = checkpoint.save_diffusers(ckpt, tmp_path / "diffusers")
    written += [folder / "model_index.json", folder / "unet/diffusion_pytorch_model.safetensors"]
    assert {p.name: _mode(p) for p in written} == {p.name: expected for p in written}


@posix_only
def test_convert_command_writes_a_model_another_user_can_read(tiny_model, tmp_path):
    src = checkpoint.save_single_file(
        checkpoint.checkpoint_from_model(tiny_model), tmp_path / "a.safetensors"
    )
    dst = tmp_path / "shared" / "b.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_core", "convert", str(src), str(dst)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        umask=0o022,
    )
    assert result.returncode == 0, result.stderr
    assert _mode(dst) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_write_creates_the_folder_and_refuses_an_existing_file_when_asked(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    assert target.read_text() == "one"
    with pytest.raises(DestinationError, match="already exists"):
        atomic_write(target, lambda tmp: tmp.write_text("two"), overwrite=False)
    assert target.read_text() == "one"


def test_check_destination_refusals_name_the_problem(tmp_path):
    (tmp_path / "in.png").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    cases = {
        tmp_path / "dir": "is a folder",
        tmp_path / "in.png": "is one of the inputs",
        tmp_path / "file" / "out.png": "is a file",
    }
    for path, message in cases.items():
        with pytest.raises(DestinationError, match=message):
            check_destination(path, overwrite=True, inputs=[tmp_path / "in.png"])
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "in.png")
    with pytest.raises(DestinationError, match="is one of the inputs"):
        check_destination(link, overwrite=True, inputs=[tmp_path / "in.png"])
    assert check_destination(tmp_path / "new" / "deeper" / "x.png", overwrite=False)


@posix_only
def test_check_destination_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    probe = (
        "import sys; from exemplar_core.files import DestinationError, check_destination\n"
        "try:\n    check_destination(sys.argv[1], overwrite=False)\n"
        "except DestinationError as err:\n    print(err); sys.exit(3)\n"
    )
    try:
        # A child process, bound by permission bits even when the tests run as root.
        result = subprocess.run(
            [sys.executable, "-c", probe, str(folder / "sub" / "x.png")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=bound_by_permissions(),
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not writable" in result.stdout


def _grant_dac_override_to_children() -> None:
    """As older Docker releases start root: CAP_DAC_OVERRIDE in the inheritable set too."""
    import ctypes

    import permissions

    header = permissions._CapHeader(permissions._CAPABILITY_VERSION_3, 0)
    data = (permissions._CapData * 2)()
    permissions._libc_call("capget", ctypes.byref(header), data)
    data[0].inheritable |= 1 << permissions._CAP_DAC_OVERRIDE
    permissions._libc_call("capset", ctypes.byref(header), data)


@posix_only
def test_a_child_bound_by_permissions_cannot_write_a_read_only_folder(tmp_path):
    """What the read-only-folder tests rely on (tests/permissions.py), also as root started with
    the override in its inheritable capabilities, which an exec would otherwise carry over."""
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    bound = bound_by_permissions()

    def preexec() -> None:
        if bound is not None:  # root
            _grant_dac_override_to_children()
            bound()

    try:
        result = subprocess.run(
            [sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(folder / "x")],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=preexec,
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1 and "PermissionError" in result.stderr, result.stderr
    assert not (folder / "x").exists()
