"""Paint-by-Example in plain PyTorch: exemplar encoder, checkpoint formats, editor, shared math.

Never imports ComfyUI. Heavy modules (torch, diffusers, open_clip) load only when a submodule that
needs them is imported.
"""

__version__ = "0.1.0"
