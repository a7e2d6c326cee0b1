"""Paint-by-Example Compile Model on the user's install, over HTTP: Loader -> Compile Model ->
(Similarity Guidance) -> Inpaint Sampler with inductor on the CPU gives the uncompiled image;
the step events (the live preview's hook) keep coming, Cancel stops a compiled run and the next
prompt succeeds, and after ComfyUI is asked to unload its models (``/free``) a compiled prompt
runs again.

The model is a one-level tiny UNet added to the install's models folder: inductor builds the
fewest kernels for it, once for the whole module (later prompts reuse the compiled code)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pbe_host
import pytest
import torch
from PIL import Image

REPO = pbe_host.REPO_ROOT
MODEL_NAME = "compile-test-tiny.safetensors"
COMPILE = "PaintByExample.CompileModel"
GUIDANCE = "PaintByExample.SimilarityGuidance"
SAMPLER_ID = "6"
INTERRUPT_STEPS = 1000  # ddim_uniform gives at most the 1000 training steps


def _one_level_model():
    from exemplar_core.model import ModelConfigs, PaintByExampleModel

    configs = ModelConfigs.tiny()
    configs.unet.update(
        block_out_channels=[32],
        down_block_types=["CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D"],
    )
    torch.manual_seed(1234)
    return PaintByExampleModel(configs).eval()


@pytest.fixture(scope="module")
def install(user_install, tmp_path_factory):
    models = tmp_path_factory.mktemp("compile_models")
    pbe_host.save_tiny_checkpoint(models / "paint_by_example" / MODEL_NAME, _one_level_model())
    pbe_host.add_model_files(user_install, models)
    return user_install


def _prompt(compiled: bool, guided: bool = False, steps: int = 2) -> dict:
    """The basic template's API twin on the test model; with Compile Model after the Loader and
    Similarity Guidance after that."""
    prompt = json.loads((REPO / "workflows/api/basic_exemplar_edit.json").read_text())
    prompt["1"]["inputs"].update(model_name=MODEL_NAME, weight_dtype="fp32")
    prompt[SAMPLER_ID]["inputs"].update(steps=steps, feather=4)
    model = ["1", 0]
    if compiled:
        prompt["40"] = {"class_type": COMPILE, "inputs": {"model": model, "mode": "compile"}}
        model = ["40", 0]
    if guided:
        settings = {"similarity": 7.0, "schedule": "linear", "similarity_end": 3.0}
        settings.update(sigma_low=0.0, sigma_high=1000.0, rescale_phi=0.5)
        prompt["41"] = {"class_type": GUIDANCE, "inputs": {"model": model, **settings}}
        model = ["41", 0]
    prompt[SAMPLER_ID]["inputs"]["model"] = model
    return prompt


def _run(server, prompt: dict, folder: Path) -> np.ndarray:
    """The prompt's saved image (the template's "save" node), [H, W, 3] 0..255."""
    from exemplar_core.headless import RunOptions, run_outputs

    folder.mkdir(parents=True)
    workflow = folder / "prompt.json"
    workflow.write_text(json.dumps(prompt))
    options = RunOptions(
        workflow=workflow, server=server.url, out=folder / "out", timeout=900, quiet=True
    )
    saved = {item.title: item.path for item in run_outputs(options)}
    return np.asarray(Image.open(saved["save"]).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def plain_and_compiled(install, tmp_path_factory):
    base = tmp_path_factory.mktemp("compile_runs")
    plain = _run(install, _prompt(False), base / "plain")
    compiled = _run(install, _prompt(True), base / "compiled")
    return plain, compiled


def test_compiled_prompt_gives_the_uncompiled_image(install, plain_and_compiled):
    plain, compiled = plain_and_compiled
    assert plain.shape == compiled.shape
    assert np.abs(plain - compiled).max() <= 1  # float rounding, then 8 bits
    log = install.log()
    assert "compiling the UNet for input" in log, log[-3000:]
    assert "runs eager (uncompiled) instead" not in log, log[-3000:]


def test_compiled_with_similarity_guidance_gives_the_guided_image(
    install, plain_and_compiled, tmp_path
):
    guided = _run(install, _prompt(False, guided=True), tmp_path / "guided")
    both = _run(install, _prompt(True, guided=True), tmp_path / "both")
    assert np.abs(guided - both).max() <= 1
    assert np.abs(guided - plain_and_compiled[0]).max() > 8  # the guidance changed the edit


def test_step_events_arrive_and_cancel_stops_a_compiled_run(install, plain_and_compiled):
    from exemplar_core.headless.client import Client
    from exemplar_core.headless.websocket import open_websocket, prompt_events

    client = Client(install.url, timeout=60)
    ws = open_websocket(client, timeout=600)
    steps, kinds, total = [], [], None
    try:
        prompt_id = client.queue(_prompt(True, steps=INTERRUPT_STEPS))
        for kind, data in prompt_events(ws, prompt_id):
            kinds.append(kind)
            if kind == "progress" and data.get("node") == SAMPLER_ID:
                steps.append(data["value"])
                total = data["max"]
                if data["value"] == 3:
                    client.interrupt()
    finally:
        ws.close()
    assert "execution_interrupted" in kinds, kinds[-5:]
    assert steps[:3] == [1, 2, 3] and max(steps) < total, (steps[-3:], total)


def test_after_cancel_and_unloading_the_models_a_compiled_prompt_runs_again(
    install, plain_and_compiled, tmp_path
):
    request = urllib.request.Request(
        install.url + "/free",
        data=json.dumps({"unload_models": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30):
        pass
    time.sleep(2)  # the prompt worker unloads between prompts
    again = _run(install, _prompt(True), tmp_path / "again")
    assert np.abs(again - plain_and_compiled[1]).max() <= 1


# ------------------------------------------------------------------------------------------
# In process: the patch itself
# ------------------------------------------------------------------------------------------


def test_the_patch_wraps_the_unet_call_of_a_clone_and_off_removes_it(host, loaded):
    from comfy.patcher_extension import WrappersMP

    model = loaded[0]
    key = host.module("nodes.compile").COMPILE_KEY
    (compiled,) = host.run(COMPILE, model=model, mode="compile")
    assert compiled is not model and key not in model.wrappers.get(WrappersMP.APPLY_MODEL, {})
    assert len(compiled.wrappers[WrappersMP.APPLY_MODEL][key]) == 1
    assert compiled.model_options[key] == "compile"
    (again,) = host.run(COMPILE, model=compiled, mode="cudagraphs")  # replaces, never stacks
    assert len(again.wrappers[WrappersMP.APPLY_MODEL][key]) == 1
    (off,) = host.run(COMPILE, model=again, mode="off")
    assert key not in off.wrappers.get(WrappersMP.APPLY_MODEL, {}) and key not in off.model_options


def test_a_model_from_elsewhere_or_an_unknown_mode_is_refused_with_a_message(host, loaded):
    error = host.module("nodes.checks").PaintByExampleInputError
    with pytest.raises(error, match="needs a Paint-by-Example MODEL"):
        host.run(COMPILE, model=object(), mode="compile")
    with pytest.raises(error, match="mode 'fast' is not one of: off, compile, cudagraphs"):
        host.run(COMPILE, model=loaded[0], mode="fast")
