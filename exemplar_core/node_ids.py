"""The pack's node ids: the names by which saved workflows and API prompts refer to its nodes.

A value here never changes (a saved workflow names its nodes by these ids); a node renamed for
the reader keeps its id. Standard library only: the nodes declare their ids from here, and the
headless runner, the benchmarks and ``workflows/build.py`` name the nodes they drive by these
constants without importing torch or ComfyUI.
"""

from __future__ import annotations

NODE_PREFIX = "PaintByExample."

LOADER = NODE_PREFIX + "Loader"
EXEMPLAR_ENCODE = NODE_PREFIX + "ExemplarEncode"
MASK_BEZIER_JITTER = NODE_PREFIX + "MaskBezierJitter"
INPAINT_SAMPLER = NODE_PREFIX + "InpaintSampler"
SIMILARITY_GUIDANCE = NODE_PREFIX + "SimilarityGuidance"
LORA_LOADER = NODE_PREFIX + "LoraLoader"
EXEMPLAR_MAPPER = NODE_PREFIX + "ExemplarMapper"
CROP_FOR_EDIT = NODE_PREFIX + "CropForEdit"
STITCH_EDIT = NODE_PREFIX + "StitchEdit"
COMPILE_MODEL = NODE_PREFIX + "CompileModel"
