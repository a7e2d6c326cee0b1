"""The standalone editor: one exemplar edit with diffusers' UNet, VAE and schedulers, no ComfyUI.

Conventions (see ``masks``): mask white = edit; keep = 1 - edit; masked image = source x keep;
UNet input ``[x, masked latent, keep]``; guidance eps = eps(v) + s (eps(c) - eps(v)) with the
learned vector v, the condition and v in one batched forward per step.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

import torch

from . import crop, masks
from .checks import (
    CONTEXT_MARGIN_MAX,
    EXEMPLAR_EXPAND_MAX,
    FEATHER_MAX,
    MASK_BLUR_MAX,
    MASK_GROW_MAX,
    RESOLUTION_MAX,
    SEED_MAX,
    SIMILARITY_MAX,
    SettingError,
    check_number,
    check_output,
)
from .color import match_color
from .config import SCHEDULE
from .guidance import DEFAULT_SIMILARITY, combine
from .model import PaintByExampleModel, use_single_token_cross_attention
from .preprocess import ResizeMode, frame_exemplar, normalize
from .preview import window_preview

if TYPE_CHECKING:
    from .lora import LoraFile

log = logging.getLogger(__name__)

SCHEDULERS: tuple[str, ...] = ("pndm", "ddim", "dpmpp_2m", "euler_a")


class EditError(ValueError):
    """Inputs the editor cannot work with."""


class EditSettingError(SettingError, EditError):
    """A setting out of range; ``name`` is the setting as the user gave it (the CLI's option)."""


def make_scheduler(name: str):
    """A fresh diffusers scheduler on Paint-by-Example's training schedule (SD 1.x defaults)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        PNDMScheduler,
    )

    base = {
        k: SCHEDULE[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    }
    if name == "pndm":  # PLMS, as the official inference and the published diffusers folder
        return PNDMScheduler(**base, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if name == "ddim":
        return DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler(**base, steps_offset=1)
    raise EditError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class EditSettings:
    """Sampling and compositing settings. The defaults are the paper's (50 PLMS steps, s = 5)."""

    steps: int = 50
    similarity: float = DEFAULT_SIMILARITY  # similarity (guidance) scale s
    seed: int = 0
    scheduler: str = "pndm"
    size: int | None = None  # processing resolution; None = the model's native one (512 for SD1)
    paste_back: bool = True  # stitch the window into the untouched source
    whole_image: bool = False  # resize the whole image instead of cropping around the mask
    context_margin: float = 0.25  # extra context around the mask's box, times its longer side
    feather: int = 16  # px over which the edit blends into the source
    mask_grow: int = 0  # px the edit mask grows by (negative shrinks), before the window is planned
    mask_blur: int = 0  # px radius of the edit mask's blur (re-binarised), after the grow
    color_match: bool = False
    mask_resize: masks.MaskResize = "bilinear"
    exemplar_resize: ResizeMode = "squash"
    exemplar_expand: float = 1.0  # the exemplar object's box grows this many times (framing)
    eta: float = 0.0  # DDIM only
    # What the user calls each field where it is not the field's name (the CLI's options), so
    # every message names the setting the user gave; not a setting itself.
    names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def name_of(self, field_name: str) -> str:
        """The setting ``field_name`` as the user knows it (``--size`` on the command line)."""
        return self.names.get(field_name, field_name)

    def __post_init__(self) -> None:
        """Every number finite and in range, before any model is loaded."""
        limits = {
            "steps": (1, SCHEDULE["num_train_timesteps"], True),
            "similarity": (0.0, SIMILARITY_MAX, False),
            "seed": (0, SEED_MAX, True),
            "size": (1, RESOLUTION_MAX, True),
            "context_margin": (0.0, CONTEXT_MARGIN_MAX, False),
            "exemplar_expand": (1.0, EXEMPLAR_EXPAND_MAX, False),
            "feather": (0, FEATHER_MAX, True),
            "mask_grow": (-MASK_GROW_MAX, MASK_GROW_MAX, True),
            "mask_blur": (0, MASK_BLUR_MAX, True),
            "eta": (0.0, 1.0, False),
        }
        for name, (low, high, integer) in limits.items():
            value = getattr(self, name)
            if name == "size" and value is None:
                continue
            try:
                check_number(value, self.name_of(name), low, high, integer)
            except SettingError as err:
                raise EditSettingError(err.name, err.problem) from None
        choices = {
            "scheduler": SCHEDULERS,
            "mask_resize": get_args(masks.MaskResize),
            "exemplar_resize": get_args(ResizeMode),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EditSettingError(
                    self.name_of(name),
                    f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}",
                )

    @classmethod
    def from_options(cls, options: Mapping[str, str] | None = None, **fields) -> EditSettings:
        """Settings from command-line options: messages name ``--context-margin`` where the
        field is ``context_margin``. Each field given is the option of the same name unless
        ``options`` maps it to the one the user typed (``{"similarity": "--scale"}``)."""
        names = {name: "--" + name.replace("_", "-") for name in fields}
        return cls(**fields, names={**names, **(options or {})})

    def check(self, size_multiple: int) -> None:
        """The settings that depend on the model: the size is a multiple of its UNet's."""
        if self.size is not None and (self.size < size_multiple or self.size % size_multiple):
            raise EditSettingError(
                self.name_of("size"),
                f"must be a positive multiple of {size_multiple}, got {self.size}",
            )


@dataclass
class EditResult:
    image: torch.Tensor  # [B, 3, H, W] 0..1, the source's size (or the processed size, see below)
    raw: torch.Tensor  # [B, 3, h, w] 0..1, the decoded window at processing size
    region: crop.Region | None  # None when the mask was empty and nothing was edited
    # [1, 3, H', W'] 0..1: the processing window with the edit mask outlined and the exemplar as
    # the encoder saw it beside it (``preview.window_preview``; the whole source when the mask
    # was empty); what ``--preview`` writes.
    preview: torch.Tensor | None = None


@dataclass(frozen=True)
class EditRequest:
    """One edit for ``Editor.edit_batch``: the arguments of ``Editor.edit``. source
    [1, 3, H, W] 0..1; edit_mask [1, 1, H, W] 0..1 (white = edit); exemplar [1, 3|4, h, w] 0..1;
    exemplar_mask [h, w] 0..1 (white = the object; the exemplar's size) or None, as
    ``cli.exemplar_mask_of`` gives it."""

    source: torch.Tensor
    edit_mask: torch.Tensor
    exemplar: torch.Tensor
    settings: EditSettings
    exemplar_mask: torch.Tensor | None = None


RESIZE_MASK_HINT = " (or pass --resize-mask to stretch it)"


def check_mask_size(
    source: torch.Tensor, edit_mask: torch.Tensor, hint: str = RESIZE_MASK_HINT
) -> None:
    """Refuse a mask [..., h, w] whose size is not the source's [..., H, W], naming both sizes."""
    if edit_mask.shape[-2:] != source.shape[-2:]:
        (h, w), (mh, mw) = source.shape[-2:], edit_mask.shape[-2:]
        raise EditError(
            f"mask is {mw}x{mh} but the source is {w}x{h}: give a mask of the source's size{hint}"
        )


def _as_batch(x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != channels:
        raise EditError(f"{what} must be [B, {channels}, H, W], got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise EditError(f"{what} has NaN or infinite values")
    return x.float().clamp(0, 1)


class Editor:
    """Runs Paint-by-Example edits with a loaded model on one device."""

    def __init__(
        self,
        model: PaintByExampleModel,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = True,
        source: str = "",
        compile: str = "off",
    ) -> None:
        self.source = source  # the model file, for messages
        self.device = torch.device(device) if device is not None else _auto_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)
        use_single_token_cross_attention(self.model.unet)  # the condition is one token
        self.progress = progress
        self._learned_vector_checked = False
        self.enable_compile(compile)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Editor:
        from .checkpoint import load_model

        return cls(load_model(path), device=device, dtype=dtype, source=str(path))

    def apply_lora(self, lora: LoraFile | str | os.PathLike[str], strength: float = 1.0) -> None:
        """Merge a LoRA file (a path or a ``read_lora`` result) into the loaded model at
        ``strength``; calls stack. See ``lora.apply_lora``: fp32 arithmetic, dtype kept."""
        from .lora import LoraFile, apply_lora, read_lora

        if not isinstance(lora, LoraFile):
            lora = read_lora(lora)
        apply_lora(self.model, lora, strength)
        self._learned_vector_checked = False  # the exemplar side may have changed

    def enable_compile(self, mode: str) -> None:
        """Run the UNet step compiled: ``mode`` is one of ``compile.COMPILE_MODES`` ("off",
        "compile", "cudagraphs"); the first step of each shape compiles, and where compiling is
        impossible one warning names the reason and the edit runs eager (``compile_unet``)."""
        from .compile import compile_unet

        compile_unet(self.model, mode)

    @property
    def size_multiple(self) -> int:
        """Processing sizes are multiples of this (``ModelConfigs.size_multiple``)."""
        return self.model.configs.size_multiple

    @property
    def native_size(self) -> int:
        """The model's training resolution (``ModelConfigs.native_size``, 512 for SD1)."""
        return self.model.configs.native_size

    @torch.no_grad()
    def encode_exemplar(
        self,
        exemplar: torch.Tensor,
        exemplar_mask: torch.Tensor | None = None,
        mode: ResizeMode = "squash",
        expand: float = 1.0,
    ) -> torch.Tensor:
        """exemplar: [B, 3|4, H, W] or [B, H, W, 3|4] 0..1 -> condition [B, 1, D]. A 4th channel
        is alpha, the exemplar mask when none is given (``preprocess.frame_exemplar``)."""
        return self._encode_exemplar(exemplar, exemplar_mask, mode, expand)[0]

    def _encode_exemplar(
        self,
        exemplar: torch.Tensor,
        exemplar_mask: torch.Tensor | None,
        mode: ResizeMode,
        expand: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (condition [B, 1, D], the exemplar as the encoder saw it [B, 3, S, S] 0..1)."""
        config = self.model.encoder.config
        view = frame_exemplar(exemplar, config, exemplar_mask, mode, expand=expand)
        pixels = normalize(view, config.mean, config.std)
        condition = self.model.encoder(pixels.to(self.device))
        self._check_output(condition, "exemplar encoder", self.model.encoder)
        return condition, view

    def _learned_vector(self, batch: int) -> torch.Tensor:
        """The encoder's learned unconditional vector [batch, 1, D] (the guidance's other half),
        checked for NaN once per editor: its weights do not change."""
        uncond = self.model.encoder.unconditional(batch)
        if not self._learned_vector_checked:
            self._check_output(uncond, "exemplar encoder", self.model.encoder)
            self._learned_vector_checked = True
        return uncond

    def _check_output(self, output: torch.Tensor, part: str, module: torch.nn.Module) -> None:
        hint = "fp32 (--dtype fp32)" if self.dtype != torch.float32 else "fp32"
        check_output(output, part, self.source, module, dtype_hint=hint)

    @torch.no_grad()
    def sample(
        self,
        masked_latent: torch.Tensor,
        keep_latent: torch.Tensor,
        condition: torch.Tensor,
        settings: EditSettings,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Denoise from noise. masked_latent [B, C, h, w] (scaled); keep_latent [B, 1, h, w];
        condition [B, 1, D]; noise [B, C, h, w] N(0, 1) (drawn from ``generator`` when None).
        Returns the final scaled latent [B, C, h, w]."""
        sched = make_scheduler(settings.scheduler)
        sched.set_timesteps(settings.steps, device=self.device)
        batch, _, h, w = masked_latent.shape
        if noise is None:
            channels = self.model.vae.config.latent_channels
            noise = torch.randn((batch, channels, h, w), generator=generator, dtype=torch.float32)
        latents = noise.to(self.device, torch.float32) * sched.init_noise_sigma
        # s = 1 is the condition alone and s = 0 the learned vector alone: one pass, not two.
        similarity = settings.similarity
        guided = similarity not in (0.0, 1.0)
        dt = self.dtype
        if similarity != 1.0:  # the learned vector takes part unless s = 1
            uncond = self._learned_vector(batch).to(condition.dtype)
        if guided:
            context = torch.cat([uncond, condition])
            masked_in = torch.cat([masked_latent] * 2)
            keep_in = torch.cat([keep_latent] * 2)
        else:
            context = condition if similarity == 1.0 else uncond
            masked_in, keep_in = masked_latent, keep_latent
        step_kwargs = _step_kwargs(sched, generator, settings.eta)
        timesteps = sched.timesteps
        bar = _progress(len(timesteps), self.progress and len(timesteps) > 1)
        try:
            for i, t in enumerate(timesteps):
                x = sched.scale_model_input(latents, t).to(dt)
                x = torch.cat([x] * 2) if guided else x
                eps = self.model.predict_noise(x, t, masked_in, keep_in, context).float()
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = combine(eps_uncond, eps_cond, similarity)
                latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
                bar.update(1)
                if callback is not None:
                    callback(i + 1, len(timesteps))
        finally:
            bar.close()
        return latents

    @torch.no_grad()
    def edit(
        self,
        source: torch.Tensor,
        edit_mask: torch.Tensor,
        exemplar: torch.Tensor,
        settings: EditSettings | None = None,
        exemplar_mask: torch.Tensor | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> EditResult:
        """One edit. source [1, 3, H, W] 0..1; edit_mask [1, 1, H, W] 0..1 (white = edit, the
        source's size); exemplar [1, 3, h, w] 0..1 (at least 16 px a side; [1, 4, h, w]: its alpha
        is the exemplar mask unless ``exemplar_mask`` is given). With paste-back the
        result has the source's size; without it, the processed window's."""
        request = EditRequest(
            source, edit_mask, exemplar, settings or EditSettings(), exemplar_mask
        )
        prepared = self._prepare(request)
        if isinstance(prepared, EditResult):  # the mask was empty
            return prepared
        return self._sample_group([prepared], callback)[0]

    @torch.no_grad()
    def edit_batch(
        self, requests: Sequence[EditRequest], max_batch: int = 8
    ) -> list[EditResult | Exception]:
        """Many edits, in the order given: each result equals ``edit()`` of its request to float
        tolerance (exactly at ``max_batch=1``). Each request is prepared alone (its checks,
        window, exemplar and its own seed's draws); prepared requests that share a latent size
        and the sampler's settings (``_group_key``) go through the UNet and the VAE decoder
        together, up to ``max_batch`` at a time. A request that cannot be prepared gets its
        exception in its place; a failure while sampling a group is returned for each member;
        the others go on. A scheduler that draws noise during its steps (euler_a, ddim with
        eta > 0) samples each request alone."""
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise EditError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        results: list[EditResult | Exception | None] = [None] * len(requests)

        def run(chunk: list[tuple[int, _Prepared]]) -> None:
            try:
                done: list[EditResult | Exception] = list(
                    self._sample_group([prepared for _, prepared in chunk])
                )
            except Exception as err:  # the whole chunk shared the failed UNet/VAE call
                done = [err] * len(chunk)
            for (index, _), result in zip(chunk, done, strict=True):
                results[index] = result

        # A group is sampled as soon as it is full, so at most one part-filled batch per group
        # waits in memory, however many requests are given.
        groups: dict[tuple, list[tuple[int, _Prepared]]] = {}
        for index, request in enumerate(requests):
            try:
                prepared = self._prepare(request, mask_hint="")
            except Exception as err:  # this request's problem; the others go on
                results[index] = err
                continue
            if isinstance(prepared, EditResult):  # the mask was empty
                results[index] = prepared
                continue
            key = _group_key(prepared, index)
            groups.setdefault(key, []).append((index, prepared))
            if len(groups[key]) == max_batch:
                run(groups.pop(key))
        for chunk in groups.values():
            run(chunk)
        return results  # type: ignore[return-value]  # every place is filled above

    def _prepare(
        self, request: EditRequest, mask_hint: str = RESIZE_MASK_HINT
    ) -> _Prepared | EditResult:
        """One request up to the sampler: checks, the grown and blurred mask, the window, the
        exemplar's condition and the request's random draws in diffusers' pipeline order.
        Returns a ``_Prepared``, or the finished ``EditResult`` when the mask is empty.
        ``mask_hint`` ends the message for a mask of the wrong size (the edit command's option)."""
        settings = request.settings
        settings.check(self.size_multiple)
        source = _as_batch(request.source, 3, "source")
        edit_mask = _as_batch(request.edit_mask, 1, "mask")
        if source.shape[0] != 1 or edit_mask.shape[0] != 1:
            raise EditError("the editor works on one source and one mask at a time")
        check_mask_size(source, edit_mask, mask_hint)
        edit_bin = masks.binarize_edit_mask(edit_mask)
        if edit_bin.sum() > 0:  # the stitch feather stays separate: it blends the grown mask
            names = (settings.name_of("mask_grow"), settings.name_of("mask_blur"))
            try:
                edit_bin = masks.grow_and_blur(
                    edit_bin, settings.mask_grow, settings.mask_blur, names
                )
            except SettingError as err:
                raise EditSettingError(err.name, err.problem) from None
        condition, exemplar_view = self._encode_exemplar(
            request.exemplar,
            request.exemplar_mask,
            settings.exemplar_resize,
            settings.exemplar_expand,
        )
        if condition.shape[0] != 1:  # the UNet batch below holds one source
            raise EditError(
                f"the editor takes one exemplar per edit, got {condition.shape[0]} "
                f"(exemplar {list(request.exemplar.shape)}): give it as [1, 3|4, h, w]"
            )
        exemplar_view = exemplar_view[0]  # [3, S, S]
        if edit_bin.sum() == 0:
            log.warning("the mask is empty: returning the source unchanged")
            preview = window_preview(source, edit_bin, exemplar_view)
            return EditResult(source.clone(), source.clone(), None, preview)

        window = crop.prepare_window(
            source,
            edit_bin,
            settings.context_margin,
            settings.size or self.native_size,
            settings.feather,
            self.size_multiple,
            whole_image=settings.whole_image,
        )
        region, keep = window.region, window.keep_mask
        preview = window_preview(window.image, window.edit_mask, exemplar_view)
        masked = window.masked_image * 2 - 1  # -1..1, the edit area 0
        factor = self.model.vae_scale_factor
        latent_hw = (region.height // factor, region.width // factor)

        # Random draws in diffusers' pipeline order (initial noise, then the VAE posterior sample),
        # so one seed gives the same edit in both.
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        channels = self.model.vae.config.latent_channels
        noise = torch.randn((1, channels, *latent_hw), generator=generator, dtype=torch.float32)
        # diffusers draws a CPU generator's samples on the CPU and moves them, on any device.
        masked_latent = self.model.encode_latent(
            masked.to(self.device, self.dtype), generator=generator
        )
        self._check_output(masked_latent, "VAE encoder", self.model.vae)
        keep_latent = masks.latent_keep_mask(keep, latent_hw, settings.mask_resize)
        return _Prepared(
            settings=settings,
            source=source,
            edit_bin=edit_bin,
            window=window,
            preview=preview,
            noise=noise,
            generator=generator,
            masked_latent=masked_latent,
            keep_latent=keep_latent.to(self.device, self.dtype),
            condition=condition.to(self.dtype),
        )

    def _sample_group(
        self,
        group: Sequence[_Prepared],
        callback: Callable[[int, int], None] | None = None,
    ) -> list[EditResult]:
        """Sample, decode and finish prepared requests of one ``_group_key`` in one batch."""
        first = group[0]
        latents = self.sample(
            torch.cat([p.masked_latent for p in group]),
            torch.cat([p.keep_latent for p in group]),
            torch.cat([p.condition for p in group]),
            first.settings,
            # draws during the steps (euler_a, ddim with eta > 0) come from the request's own
            # generator, which is why such requests are never grouped (``_group_key``)
            first.generator,
            noise=torch.cat([p.noise for p in group]),
            callback=callback,
        )
        self._check_output(latents, "UNet", self.model.unet)
        decoded = self.model.decode_latent(latents).float()
        self._check_output(decoded, "VAE decoder", self.model.vae)
        raws = ((decoded + 1) / 2).clamp(0, 1).cpu()
        return [self._finish(p, raws[i : i + 1]) for i, p in enumerate(group)]

    def _finish(self, prepared: _Prepared, raw: torch.Tensor) -> EditResult:
        """raw [1, 3, h, w] 0..1, the decoded window -> the result (colour match, stitch)."""
        settings, window = prepared.settings, prepared.window
        if settings.color_match:
            raw = match_color(raw, window.image, window.keep_mask)
        if not settings.paste_back:
            return EditResult(image=raw, raw=raw, region=window.region, preview=prepared.preview)
        image = crop.stitch(
            prepared.source, raw, window.region, prepared.edit_bin, settings.feather
        )
        return EditResult(image=image, raw=raw, region=window.region, preview=prepared.preview)


@dataclass
class _Prepared:
    """A request ready for the sampler (``Editor._prepare``)."""

    settings: EditSettings
    source: torch.Tensor  # [1, 3, H, W] 0..1
    edit_bin: torch.Tensor  # [1, 1, H, W] {0, 1}, grown and blurred
    window: crop.Window
    preview: torch.Tensor
    noise: torch.Tensor  # [1, C, h, w] N(0, 1), on the CPU
    generator: torch.Generator  # after the noise and the VAE posterior draws
    masked_latent: torch.Tensor  # [1, C, h, w] scaled, on the editor's device and dtype
    keep_latent: torch.Tensor  # [1, 1, h, w]
    condition: torch.Tensor  # [1, 1, D]


def _group_key(prepared: _Prepared, index: int) -> tuple:
    """Requests with equal keys can share one UNet batch: the same latent size and sampler
    settings, and (for a scheduler that draws noise during its steps) the same request."""
    s = prepared.settings
    # the steps of euler_a and of ddim with eta > 0 draw noise from the request's generator
    draws = s.scheduler == "euler_a" or (s.scheduler == "ddim" and s.eta > 0)
    return (
        tuple(prepared.masked_latent.shape[-2:]),
        tuple(prepared.condition.shape[1:]),
        s.steps,
        s.scheduler,
        s.similarity,
        s.eta,
        index if draws else None,
    )


def _step_kwargs(scheduler, generator: torch.Generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="denoising", unit="step", disable=not enabled, leave=False)


def _auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
