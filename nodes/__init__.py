"""ComfyUI nodes of the Paint-by-Example pack (imported only by ComfyUI, through the pack root).

One module per concern: ``loader`` (checkpoint -> MODEL, VAE, encoder), ``model_builder`` (the
native ComfyUI objects), ``encode`` (exemplar -> CONDITIONING), ``bezier_mask``, ``sampler``
(crop, sample, stitch), ``guidance`` (similarity guidance patch), ``types`` and ``checks``
(shared types and input validation), ``folders`` (model folder registration) and ``extension``
(the V3 entry point).
"""
