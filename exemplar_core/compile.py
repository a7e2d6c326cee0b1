"""Compiled and graph-captured UNet steps: ``torch.compile`` (inductor), and on CUDA also CUDA
graphs, for the editor (``compile_unet``) and the nodes (``CompiledCall`` under ComfyUI's model
wrapper).

Modes (``COMPILE_MODES``): ``off`` runs eager; ``compile`` is ``torch.compile`` with inductor and
static shapes (``dynamic=False``): each new input shape (resolution, batch) or dtype compiles once,
logged, up to ``MAX_SHAPES`` shapes (after that new shapes run eager, with one warning);
``cudagraphs`` is the same with CUDA graphs on top (``mode="reduce-overhead"``: inputs are copied
into static buffers and each shape is captured once, recaptured when the shape or dtype changes).

Nothing is compiled at import or when a mode is set: the first call of each shape compiles. When
compiling or capturing is impossible (torch without ``torch.compile``, TorchDynamo disabled,
CUDA graphs asked for on the CPU, no C++ compiler, an error in the first compiled call of a
shape), one warning names the reason and every call runs eager: an edit never fails for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

log = logging.getLogger(__name__)

CompileMode = Literal["off", "compile", "cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
# Distinct input signatures (shapes, dtypes, devices) compiled per wrapped step; TorchDynamo's own
# recompile limit is 8 per function too, and beyond it would run eager without saying so.
MAX_SHAPES = 8
# What each mode asks of torch.compile.
_TORCH_MODES: dict[str, str | None] = {"compile": None, "cudagraphs": "reduce-overhead"}


class CompileError(ValueError):
    """An unknown compile mode."""


def check_mode(mode: str) -> CompileMode:
    """``mode`` if it is one of ``COMPILE_MODES``; else CompileError naming the choices."""
    if mode not in COMPILE_MODES:
        raise CompileError(
            f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}"
        )
    return mode  # type: ignore[return-value]


def unavailable_reason(mode: str, device: torch.device | None = None) -> str | None:
    """Why ``mode`` cannot run here (on ``device`` when given), or None when it can be tried."""
    if mode == "off":
        return None
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch 2.0 or newer)"
    try:
        import torch._dynamo as dynamo
    except ImportError as err:  # a build of torch without TorchDynamo
        return f"TorchDynamo cannot be imported ({err})"
    if not dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python or platform"
    if getattr(dynamo.config, "disable", False):
        return (
            "TorchDynamo is disabled (TORCH_COMPILE_DISABLE=1, TORCHDYNAMO_DISABLE=1 or "
            "torch._dynamo.config.disable)"
        )
    if mode == "cudagraphs" and device is not None and device.type != "cuda":
        return (
            f"CUDA graphs need a CUDA device and the UNet runs on {device.type}; use the "
            "'compile' mode there"
        )
    return None


def _signature(args: tuple, kwargs: dict) -> tuple:
    """The shapes, dtypes and devices of the tensors among the call's arguments: what makes a
    static-shape compile specialise anew."""

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), value.dtype, value.device)
        if isinstance(value, (list, tuple)):
            return tuple(one(v) for v in value)
        return None

    return (one(args), tuple(sorted((k, one(v)) for k, v in kwargs.items())))


def _first_device(args: tuple, kwargs: dict) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _shape_text(args: tuple, kwargs: dict) -> str:
    tensor = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    if tensor is None:
        return "these inputs"
    return f"input {list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


class CompiledCall:
    """``function`` (a UNet step) compiled in ``mode`` on first use, with an eager fallback.

    Call it as ``function``. The first call of each input signature compiles (logged); a
    failure there (or a mode this machine cannot run) logs one warning with the reason and runs
    ``function`` eagerly from then on; when the eager call fails too, its error is raised (the
    inputs are at fault, not the compiler). ``what`` names the step in messages.
    """

    def __init__(self, function: Callable[..., Any], mode: str, what: str = "the UNet step"):
        self.function = function
        self.mode = check_mode(mode)
        self.what = what
        self.fallback_reason: str | None = None  # set once the step runs eager for good
        self._compiled: Callable[..., Any] | None = None
        self._shapes: set[tuple] = set()
        self._warned_limit = False

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiler (not off, not fallen back)."""
        return self.mode != "off" and self.fallback_reason is None

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        log.warning(
            "compile mode %r: %s; %s runs eager (uncompiled) instead", self.mode, reason, self.what
        )

    def _compile(self) -> Callable[..., Any]:
        if self._compiled is None:
            self._compiled = torch.compile(
                self.function, mode=_TORCH_MODES[self.mode], dynamic=False, fullgraph=False
            )
        return self._compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self.function(*args, **kwargs)
        signature = _signature(args, kwargs)
        if signature in self._shapes:
            # TorchDynamo still recompiles a known signature when a guard changes (new sigmas, a
            # patched weight), so this call may compile too: the same fallback as the first.
            return self._guarded(args, kwargs)
        reason = unavailable_reason(self.mode, _first_device(args, kwargs))
        if reason is not None:
            self._fall_back(reason)
            return self.function(*args, **kwargs)
        if len(self._shapes) >= MAX_SHAPES:
            if not self._warned_limit:
                log.warning(
                    "compile mode %r: %s was compiled for %d input shapes already; %s and any "
                    "further new shape run eager",
                    self.mode,
                    self.what,
                    MAX_SHAPES,
                    _shape_text(args, kwargs),
                )
                self._warned_limit = True
            return self.function(*args, **kwargs)
        log.info(
            "compile mode %r: compiling %s for %s (shape %d of at most %d)",
            self.mode,
            self.what,
            _shape_text(args, kwargs),
            len(self._shapes) + 1,
            MAX_SHAPES,
        )
        out = self._guarded(args, kwargs)
        if self.active:
            self._shapes.add(signature)
        return out

    def _guarded(self, args: tuple, kwargs: dict) -> Any:
        """The compiled step on the inputs; on a compiler error, the eager result and a
        fallback."""
        try:
            return self._run(self._compile(), args, kwargs)
        except Exception as err:  # noqa: BLE001 (any compiler failure means: run eager)
            eager = self.function(*args, **kwargs)  # raises when the inputs are at fault
            self._fall_back(f"compiling failed ({type(err).__name__}: {_first_line(err)})")
            return eager

    def _run(self, compiled: Callable[..., Any] | None, args: tuple, kwargs: dict) -> Any:
        assert compiled is not None
        if self.mode != "cudagraphs":
            return compiled(*args, **kwargs)
        # A CUDA graph's outputs live in its static pool and are overwritten by the next replay;
        # the sampler keeps earlier steps' noise predictions (PLMS), so each output is copied.
        torch.compiler.cudagraph_mark_step_begin()
        return _clone_tensors(compiled(*args, **kwargs))


def _clone_tensors(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_clone_tensors(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # diffusers' BaseOutput
        for key in list(value.keys()):
            value[key] = _clone_tensors(value[key])
        return value
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else "no message"


def compile_unet(model: torch.nn.Module, mode: str = "compile") -> CompiledCall | None:
    """Run ``model.predict_noise`` (the one UNet call of each sampling step) compiled in
    ``mode``; ``"off"`` restores the eager method. Returns the wrapper (None for off). The
    model's weights are shared, not copied: moving or patching the model later is seen (a
    device change recompiles)."""
    check_mode(mode)
    if isinstance(vars(model).get("predict_noise"), CompiledCall):
        del model.predict_noise  # back to the class's method before wrapping anew
    if mode == "off":
        return None
    step = CompiledCall(model.predict_noise, mode, what="the UNet step")
    model.predict_noise = step
    return step
