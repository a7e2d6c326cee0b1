"""Host-test fixtures: a real ComfyUI from COMFYUI_PATH; every test here skips without it."""

from __future__ import annotations

from pathlib import Path

import pbe_host
import pytest

HOST_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HOST_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.host)
            if not pbe_host.COMFYUI_PATH:
                item.add_marker(pytest.mark.skip(reason=pbe_host.SKIP_REASON))


@pytest.fixture(autouse=True)
def _as_comfyui_runs_nodes():
    """ComfyUI's executor runs every node under ``torch.inference_mode()``; so does each host
    test (``Host.run`` on its own too), so direct calls of core nodes see what they see there."""
    import torch

    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A model folder (registered like an extra_model_paths.yaml entry) with the tiny model."""
    folder = tmp_path_factory.mktemp("pbe_models")
    pbe_host.save_tiny_checkpoint(folder / pbe_host.TINY_MODEL_NAME)
    return folder


@pytest.fixture(scope="session")
def host(models_dir) -> pbe_host.Host:
    return pbe_host.load_host(models_dir)


@pytest.fixture(scope="session")
def loaded(host):
    """(MODEL, VAE, PBE_ENCODER) of the tiny checkpoint, through the Loader node."""
    return host.run(
        "PaintByExample.Loader", model_name=pbe_host.TINY_MODEL_NAME, weight_dtype="fp32"
    )


@pytest.fixture(scope="session")
def user_install(tmp_path_factory):
    """ComfyUI started as a user's install runs it (the pack copied into custom_nodes/, an empty
    input folder, the embedded model only), loading the pack as 0.3.64 does: get_node_list()."""
    server = pbe_host.start_user_install(tmp_path_factory.mktemp("user_install"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def user_install_newer_loader(tmp_path_factory):
    """The same install, loading the pack as ComfyUI after 0.3.64 does: on_load() first."""
    base = tmp_path_factory.mktemp("user_install_newer")
    server = pbe_host.start_user_install(base, newer_loader=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vit_l_pair(tmp_path_factory) -> Path:
    """A models folder with the two files the CLIP Vision + Exemplar Mapper template names
    (random but full-size ViT-L/14: ``vit_l_files.write_vit_l_pair``), written once; tests link
    them into an install's models folder with ``pbe_host.add_model_files`` when they need them."""
    from vit_l_files import write_vit_l_pair

    build = pbe_host.workflows_build()
    root = tmp_path_factory.mktemp("vit_l_models")
    write_vit_l_pair(root, build.PUBLISHED_MODEL, build.CLIP_VISION_FILE)
    return root
