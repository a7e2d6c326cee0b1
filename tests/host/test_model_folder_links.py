"""Model names in the real ComfyUI: a link in the model folder loads, a climbing name does not."""

from __future__ import annotations

import pbe_host


def test_a_linked_model_loads_and_names_that_climb_out_are_refused(host, models_dir, tmp_path):
    import folder_paths

    shared = tmp_path / "shared-drive"
    target = pbe_host.save_tiny_checkpoint(shared / "on-the-shared-drive.safetensors")
    link = models_dir / "linked-tiny.safetensors"
    link.symlink_to(target)
    loader = host.node("PaintByExample.Loader")
    try:
        folder_paths.filename_list_cache.pop("paint_by_example", None)
        assert "linked-tiny.safetensors" in host.module("nodes.folders").list_models()
        assert loader.validate_inputs(model_name="linked-tiny.safetensors") is True
        model, vae, encoder = host.run(
            "PaintByExample.Loader", model_name="linked-tiny.safetensors"
        )
        assert encoder.out_dim == model.model.model_config.unet_config["context_dim"]
        # Before, this name was quietly cut back to the folder's own tiny model and loaded.
        climbing = f"../{pbe_host.TINY_MODEL_NAME}"
        message = loader.validate_inputs(model_name=climbing)
        assert isinstance(message, str) and "points outside" in message
    finally:
        link.unlink()
        folder_paths.filename_list_cache.pop("paint_by_example", None)
