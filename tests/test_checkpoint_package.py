"""Old paths (formats, keymap, convert) keep working for users; project code does not use them."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import exemplar_core.checkpoint
from exemplar_core import convert, dtypes, formats, keymap

ROOT = Path(__file__).resolve().parents[1]
DEPRECATED = ("exemplar_core.formats", "exemplar_core.keymap", "exemplar_core.convert")

# Every public name the old modules had (save_official and ldm_unet_params were test-only and are
# gone); a name dropped from a re-export breaks a user's script.
OLD_NAMES = {
    formats: """CheckpointError DIFFUSERS_PARTS DIFFUSERS_WEIGHTS DTYPES ENCODER_PREFIX
        EXPECTED_OFFICIAL FORMAT_NAME FORMAT_VERSION Format IGNORED_OFFICIAL_KEYS
        IGNORED_OFFICIAL_PREFIXES IgnoredPickleObject MAX_COMPRESSED_TOTAL MAX_PICKLE_RECORD
        MAX_SAFETENSORS_HEADER METADATA_GLOBALS METADATA_GLOBAL_PREFIXES OFFICIAL_HEAD_KEYS
        PbECheckpoint RESERVED_METADATA StateDict Tensor UNET_PREFIX VAE_PREFIX canonical_config
        checkpoint_from_model clip_vision_config describe_foreign_checkpoint detect_format
        load_checkpoint load_model model_from_checkpoint official_state_dict save_diffusers
        save_single_file single_file_metadata single_file_state_dict""",
    keymap: """CLIP_DROPPED Direction ENCODER_HEAD FusedRule KeyMappingError OFFICIAL_MAPPER_PREFIX
        OFFICIAL_TOWER_PREFIX PrefixRule StateDict Tensor UNET_RESNET VAE_ATTENTION
        VAE_ATTENTION_DEPRECATED VAE_RESNET apply_fused_rules apply_prefix_rules
        check_unet_config_supported clip_open_clip_to_transformers clip_transformers_to_open_clip
        clip_vision_rules count_indexed encoder_config_from_clip_config encoder_config_from_weights
        encoder_from_diffusers encoder_from_official encoder_to_diffusers encoder_to_official
        ldm_unet_kwargs ldm_vae_ddconfig mapper_rules strip_vision_model_level unet_config_from_ldm
        unet_diffusers_to_ldm unet_ldm_to_diffusers unet_rules vae_config_from_ldm
        vae_diffusers_to_ldm vae_ldm_to_diffusers vae_rules""",
    convert: "EXIT_BAD_INPUT METADATA_PREVIEW describe main register run_convert run_info",
}


def _new_homes() -> list[object]:
    package = exemplar_core.checkpoint
    names = [info.name for info in pkgutil.iter_modules(package.__path__)]
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names] + [dtypes]


@pytest.mark.parametrize("old", list(OLD_NAMES), ids=lambda m: m.__name__)
def test_old_names_are_the_same_objects_as_the_new_ones(old):
    homes = _new_homes()
    names = OLD_NAMES[old].split()
    assert sorted(old.__all__) == sorted(names)
    assert "deprecated" in old.__doc__.lower() and "exemplar_core.checkpoint" in old.__doc__
    for name in names:
        found = [home for home in homes if name in vars(home)]
        assert found, f"{old.__name__}.{name} has no home in exemplar_core.checkpoint"
        assert all(getattr(old, name) is vars(home)[name] for home in found), name


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of the modules a file imports (``root`` counts as the top package)."""
    package = list(path.relative_to(root).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_project_code_does_not_import_the_deprecated_paths():
    shims = {ROOT / (name.replace(".", "/") + ".py") for name in DEPRECATED}
    offenders = []
    for folder in ("exemplar_core", "nodes", "train", "bench", "workflows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in shims and _imported_modules(path) & set(DEPRECATED):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_import_scan_sees_relative_and_absolute_forms(tmp_path):
    cases = {
        "nodes/a.py": "from ..exemplar_core.keymap import ldm_unet_kwargs\n",
        "exemplar_core/b.py": "from . import convert\n",
        "train/c.py": "from exemplar_core import formats\n",
        "bench/d.py": "import exemplar_core.formats\n",
    }
    for name, text in cases.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
        assert _imported_modules(tmp_path / name, tmp_path) & set(DEPRECATED), name


@pytest.mark.parametrize(
    "old, new",
    [
        ("exemplar_core.formats", "exemplar_core.checkpoint"),
        ("exemplar_core.keymap", "exemplar_core.checkpoint.keymap"),
        ("exemplar_core.convert", "exemplar_core.checkpoint.cli"),
        ("exemplar_core.inpaint", "exemplar_core.masks"),
    ],
)
def test_an_old_path_warns_and_names_its_new_home(old, new):
    """A user importing an old path is told, once, where it went (and that it goes next release)."""
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", f"import {old}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DeprecationWarning" in result.stderr and f"use {new}" in result.stderr, result.stderr
