"""The training loop: self-reference pairs, frozen CLIP tower + VAE, ε-MSE, EMA, exact resume.

One process per device through HF accelerate (``accelerate launch`` for DDP; a plain ``python
-m train`` is one process). Layout under ``out_dir``::

    checkpoints/step-00002000/   resumable state (trained weights, optimiser, scheduler, EMA, RNG,
                                 data position, a manifest of sizes and hashes); written to a
                                 temporary folder, then renamed (train/checkpoints.py)
    checkpoints/latest           name of the newest complete checkpoint (atomic replace)
    models/pbe-step-00002000.safetensors, models/pbe-final.safetensors   exported models
                                 (train.method = "lora": pbe-lora-step-00002000.safetensors,
                                 pbe-lora-final.safetensors LoRA files, plus the merged models
                                 with lora.export_merged)
    validation/step-00001000.png validation grids; logs/ TensorBoard; train.log; summary.json
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from exemplar_core.config import SCHEDULE
from exemplar_core.files import atomic_write_text
from exemplar_core.masks import unet_input
from exemplar_core.model import PaintByExampleModel

from . import checkpoints
from .augment import PairSpec
from .cache import FrozenCache, compute_frozen
from .config import TrainConfig
from .dataset import (
    DataPosition,
    EpochBatchSampler,
    PairDataset,
    RepeatedDataset,
    collate_pairs,
    pair_spec,
)
from .ema import EMA
from .model_init import build_model
from .optim import optimizer_from_config
from .preflight import check_out_dir, require_optimizer_package
from .readers import BoxFilter, ImageRecord, ReadStats, read_dataset, require_records
from .signals import StopSignals, ignore_stop_signals

log = logging.getLogger("train")


class TrainingError(RuntimeError):
    """The run cannot continue (diverged loss, inconsistent resume state, a failed save)."""


class ResumeError(TrainingError):
    """``--resume`` found checkpoints but none it can continue from. Every rank raises it;
    ``main_process`` says whether this one should tell the user (once per run)."""

    def __init__(self, message: str, main_process: bool = True):
        super().__init__(message)
        self.main_process = main_process


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped the run after a step; ``checkpoint`` holds that step (or, when
    the signal came before any new step, the checkpoint the run started from, or None)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, main_process: bool):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.main_process = main_process
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint.name} is complete" if checkpoint else "no checkpoint yet"
        super().__init__(f"stopped by {name} at step {step}: {saved}")


# ---------------------------------------------------------------------------------------------
# loss and schedule


def warmup_factor(step: int, warmup_steps: int, start: float) -> float:
    """LambdaLinearScheduler (f_start -> f_max = 1 linearly over the warm-up, then constant 1)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


@dataclass(frozen=True)
class LrSchedule:
    """Learning-rate factor per optimiser step: the linear warm-up, then constant, then (when
    ``decay`` is not "none") a linear or cosine decay to ``end`` over the last ``decay_steps``
    steps of the run (all steps after the warm-up when ``decay_steps`` is 0)."""

    warmup_steps: int
    warmup_start: float
    total_steps: int
    decay: str = "none"
    decay_steps: int = 0
    end: float = 0.0

    @classmethod
    def from_config(cls, t, total_steps: int) -> LrSchedule:
        return cls(
            t.warmup_steps, t.warmup_start, total_steps, t.lr_decay, t.lr_decay_steps, t.lr_end
        )

    @property
    def decay_start(self) -> int:
        if self.decay == "none":
            return self.total_steps
        start = self.total_steps - self.decay_steps if self.decay_steps else self.warmup_steps
        return min(self.total_steps, max(start, self.warmup_steps))

    def __call__(self, step: int) -> float:
        factor = warmup_factor(step, self.warmup_steps, self.warmup_start)
        start = self.decay_start
        if step <= start or self.decay == "none":
            return factor
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.end + (1.0 - self.end) * shape


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float):
    """Min-SNR-γ weights for ε-prediction: min(SNR, γ) / SNR, per sample [B]."""
    alpha = alphas_cumprod[timesteps]
    snr = alpha / (1 - alpha)
    return torch.clamp(snr, max=gamma) / snr


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    min_snr_gamma: float,
    prior_split: int = 0,
    prior_weight: float = 1.0,
    position_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """ε-MSE averaged over C, H, W then the batch (official), optional min-SNR weighting.

    ``position_weights`` [B, 1, H, W] (or None = uniform) turns the per-sample mean over C, H, W
    into a weighted mean (``train.masked_loss_weight``).

    With ``prior_split`` > 0 the first ``prior_split`` samples are the subject and the rest the
    prior: loss = subject loss + prior_weight * prior loss (min-SNR on the subject part only,
    as diffusers' DreamBooth script).
    """
    squared = F.mse_loss(pred.float(), target.float(), reduction="none")
    if position_weights is None:
        per_sample = squared.mean(dim=(1, 2, 3))
    else:
        weights_map = position_weights.float().expand_as(squared)
        per_sample = (squared * weights_map).sum(dim=(1, 2, 3)) / weights_map.sum(dim=(1, 2, 3))
    weights = torch.ones_like(per_sample)
    if min_snr_gamma > 0:
        weights = min_snr_weights(timesteps, alphas_cumprod, min_snr_gamma)
    if prior_split <= 0:
        return (per_sample * weights).mean()
    subject = (per_sample[:prior_split] * weights[:prior_split]).mean()
    return subject + prior_weight * per_sample[prior_split:].mean()


def timestep_weights(
    count: int, bias: str, multiplier: float = 2.0, portion: float = 0.25
) -> torch.Tensor | None:
    """Sampling weights over ``count`` timesteps, or None for uniform (``bias`` = 'none')."""
    if bias == "none":
        return None
    weights = torch.ones(count)
    span = max(1, round(count * portion))
    if bias == "later":
        weights[count - span :] *= multiplier
    elif bias == "earlier":
        weights[:span] *= multiplier
    else:
        raise ValueError(f"unknown timestep bias {bias!r}: none, later or earlier")
    return weights


def draw_timesteps(
    size: int, count: int, weights: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """``size`` training timesteps in [0, count): uniform when ``weights`` is None, else drawn
    with those sampling weights (``timestep_weights``, on the generator's device)."""
    if weights is None:
        return torch.randint(0, count, (size,), generator=generator, device=generator.device)
    return torch.multinomial(weights, size, replacement=True, generator=generator)


def draw_dropout(
    size: int,
    probability: float,
    mode: str,
    generator: torch.Generator,
    shared: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Which samples get the learned vector instead of their condition: bool [size].

    ``per_sample``: independent draws. ``per_batch`` (the official code): one draw for the whole
    batch from ``shared``, a generator seeded alike on every rank, so all ranks agree.
    """
    if mode == "per_batch":
        dropped = bool(torch.rand(1, generator=shared) < probability)
        return torch.full((size,), dropped, device=device)
    return torch.rand(size, generator=generator, device=generator.device).to(device) < probability


class Denoiser(nn.Module):
    """The trained path in one module (what DDP wraps): mapper head -> condition dropout -> UNet.

    The frozen tower's pooled output comes in precomputed; the dropout uses ``torch.where`` so
    every trained parameter stays in the graph (zero gradient when dropped), as DDP requires.
    """

    def __init__(self, model: PaintByExampleModel) -> None:
        super().__init__()
        self.unet = model.unet
        self.encoder = model.encoder

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        masked_latent: torch.Tensor,
        keep_latent: torch.Tensor,
        pooled: torch.Tensor,
        drop: torch.Tensor,
    ) -> torch.Tensor:
        """noisy, masked_latent [B, 4, h, w]; keep_latent [B, 1, h, w]; pooled [B, W]; drop [B]."""
        condition = self.encoder.project(pooled)
        uncond = self.encoder.unconditional(condition.shape[0]).to(condition.dtype)
        condition = torch.where(drop[:, None, None], uncond, condition)
        x = unet_input(noisy, masked_latent, keep_latent.to(noisy.dtype))
        return self.unet(x, timesteps, encoder_hidden_states=condition).sample


def trainable_parameters(model: PaintByExampleModel) -> list[nn.Parameter]:
    return list(model.unet.parameters()) + model.encoder.trainable_parameters()


def freeze_for_training(
    model: PaintByExampleModel, params: list[nn.Parameter] | None = None
) -> None:
    """Training mode with only ``params`` trained (default: the UNet and the encoder head); the
    CLIP tower and the VAE stay frozen in eval mode."""
    model.requires_grad_(False)
    for p in trainable_parameters(model) if params is None else params:
        p.requires_grad_(True)
    model.train()
    model.vae.eval()
    model.encoder.tower.eval()


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class PreparedData:
    train: list[ImageRecord]
    validation: list[ImageRecord]
    stats: ReadStats
    subject: list[ImageRecord] | None = None
    class_records: list[ImageRecord] | None = None


def prepare_data(config: TrainConfig) -> PreparedData:
    """Read and filter annotations; raises DatasetError before any model is loaded."""
    d, s = config.data, config.subject
    if s.enabled:
        subject, stats = read_dataset(s.format, s.path, s.image_root, BoxFilter(0.0, 1.0))
        require_records(subject, stats, "subject annotation file", s.path)
        class_records = None
        if s.class_data:
            filt = BoxFilter(d.min_area, d.max_area, tuple(str(c) for c in s.class_names))
            class_records, cstats = read_dataset(
                s.class_data_format, s.class_data, s.class_image_root, filt
            )
            require_records(class_records, cstats, "class dataset", s.class_data)
        return PreparedData(subject, subject[:1], stats, subject, class_records)
    filt = BoxFilter(
        d.min_area,
        d.max_area,
        tuple(str(c) for c in d.classes),
        tuple(str(i) for i in d.skip_images),
        d.skip_crowd,
    )
    records, stats = read_dataset(d.format, d.path, d.image_root, filt)
    require_records(records, stats, "annotation file", d.path)
    order = list(range(len(records)))
    random.Random(config.train.seed).shuffle(order)
    held = order[: d.val_count] if len(records) > d.val_count else []
    held_set = set(held)
    train = [records[i] for i in order if i not in held_set]
    validation = [records[i] for i in held] or [records[order[0]]]
    return PreparedData(train, validation, stats)


# ---------------------------------------------------------------------------------------------
# checkpoint files


def _save_torch(obj, path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write (a full disk) keeps its
    OSError as the context of torch's RuntimeError."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def _write_error(error: BaseException) -> str:
    """The OSError behind a failed write (``[Errno 28] No space left on device``), else the
    error itself."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {error}"


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    for key, generator in generators.items():
        generator.set_state(state["generators"][key])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Builds everything from a config and runs to ``max_steps`` (or resumes to it)."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.out_dir = Path(config.out_dir)
        self.step = 0
        self.consumed = 0  # micro-batches consumed by this rank (the data position)
        self.skipped = 0
        self.samples = 0
        self.data_checksum = 0.0  # sum of this rank's target pixels (shows the ranks' shards)
        self.last_checkpoint: Path | None = None
        self.stop = StopSignals(announce=False)  # installed by run()

    # -- setup -----------------------------------------------------------------------------
    def _setup_logging(self) -> None:
        if self.accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.out_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            self._log_handler = handler
            # Warnings (a checkpoint passed over on resume, ...) also reach the terminal.
            console = logging.StreamHandler()
            console.setLevel(logging.WARNING)
            console.setFormatter(logging.Formatter("warning: %(message)s"))
            log.addHandler(console)
            self._console_handler = console

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        cfg, t = self.config, self.config.train
        require_optimizer_package(t.optimizer)
        check_out_dir(self.out_dir, self.resume)
        self.data = prepare_data(cfg)  # fails before any model loads
        # accelerate keeps its settings in process-wide singletons; clear them (not the process
        # group) so several runs with different settings can follow each other in one process.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            cpu=t.cpu,
            # Ranks wait for the main process while it validates or writes checkpoints.
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=t.dist_timeout))],
        )
        acc = self.accelerator
        self.stop.announce = acc.is_main_process
        # Ranks agree on stopping and on failed saves through a CPU (gloo) group: its all-reduce
        # of one integer per step never waits on an accelerator's queue.
        self._control_group = None
        if acc.num_processes > 1 and torch.distributed.get_backend() != "gloo":
            self._control_group = torch.distributed.new_group(backend="gloo")
        self._setup_logging()
        log.info("data: %s", self.data.stats.summary())
        if t.cudnn_benchmark and torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        if t.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.device = acc.device
        # On an accelerator, reading the loss or the gradient norm every step would stall the
        # device queue (a host sync per step): they are read at log steps and before checkpoints.
        self.defer_sync = self.device.type != "cpu"
        self._first_bad_step = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_bad_loss = torch.zeros((), device=self.device)
        self.model = build_model(cfg.model, t.seed).to(self.device)
        enc = self.model.encoder.config
        self.spec: PairSpec = pair_spec(cfg.data, enc.image_size, enc.mean, enc.std)
        if cfg.subject.enabled:
            self._prepare_prior()  # by the start model, before any adapter exists
        self.lora_base = None
        if cfg.method == "lora":
            self.params = self._inject_lora()
        else:
            self.params = trainable_parameters(self.model)
        freeze_for_training(self.model, self.params)
        if t.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        if t.channels_last:
            self.model.unet.to(memory_format=torch.channels_last)
            self.model.vae.to(memory_format=torch.channels_last)
        if t.compile:
            self.model.unet.compile()  # in place: parameters and state-dict keys stay the same
        self.denoiser = Denoiser(self.model)
        optimizer = optimizer_from_config(self.params, t)
        self.denoiser, self.optimizer = acc.prepare(self.denoiser, optimizer)
        self.ema = None
        if t.ema and acc.is_main_process:
            names = {id(p): n for n, p in self.model.named_parameters()}
            self.ema = EMA(
                self.params,
                t.ema_decay,
                [names[id(p)] for p in self.params],
                device=None if t.ema_device == "auto" else t.ema_device,
                every=t.ema_every,
            )
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler(**SCHEDULE)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)
        weights = timestep_weights(
            self.noise_scheduler.config.num_train_timesteps,
            t.timestep_bias,
            t.timestep_bias_multiplier,
            t.timestep_bias_portion,
        )
        self.timestep_weights = None if weights is None else weights.to(self.device)
        rank = acc.process_index
        self.generators = {
            "noise": torch.Generator(device=self.device).manual_seed(t.seed + 7919 * (rank + 1)),
            "shared": torch.Generator().manual_seed(t.seed),  # same draws on every rank
        }
        self._build_loaders()
        self.max_steps = t.max_steps or max(1, t.epochs * self.batches_per_epoch // t.grad_accum)
        # Stepped once per optimiser step here (not through accelerate, which would step it once
        # per process), so the schedule means the same on 1 or 64 GPUs. Built once the run's
        # length is known (the decay ends at max_steps), and through a plain lambda, so the saved
        # scheduler state carries no schedule: a resumed run follows its own config's.
        self.lr_schedule = LrSchedule.from_config(t, self.max_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.lr_schedule(step)
        )
        if self.resume:
            self._load_checkpoint()
        self.writer = None
        if acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "logs"))
            atomic_write_text(self.out_dir / "config.toml", _to_toml(cfg))

    def _inject_lora(self) -> list[nn.Parameter]:
        """peft adapters per [lora] (seeded alike on every rank); keeps the exemplar weights
        the LoRA file's differences are taken against."""
        from .lora import exemplar_base_state, inject_lora

        lora = self.config.lora
        self.lora_base = exemplar_base_state(self.model, lora)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also reseed every CUDA
            # generator, which the fork does not restore.
            torch.default_generator.manual_seed(self.config.train.seed + 104729)
            params = inject_lora(self.model, lora)
        log.info(
            "LoRA rank %d alpha %g on %s, exemplar %s: %d trained parameters",
            lora.rank,
            lora.alpha,
            ", ".join(lora.unet_modules) or "no UNet layer",
            lora.exemplar,
            sum(p.numel() for p in params),
        )
        return params

    def _prepare_prior(self) -> None:
        from .subject import ExemplarSource, PriorDataset, generate_prior, read_manifest

        s, acc = self.config.subject, self.accelerator
        self.prior_dataset = None
        if s.num_prior <= 0:
            return
        prior_dir = Path(s.prior_dir) if s.prior_dir else self.out_dir / "prior"
        exemplars = ExemplarSource(
            s.class_exemplars, self.data.class_records, self.config.data.ref_pad
        )
        existing = read_manifest(prior_dir)
        acc.wait_for_everyone()  # every rank has read the same state before any writes
        generate_prior(
            self.model,
            self.data.subject,
            exemplars,
            s.num_prior,
            self.spec,
            prior_dir,
            self.config.train.seed,
            s.prior_steps,
            s.prior_similarity,
            s.prior_scheduler,
            self.device,
            rank=acc.process_index,
            world_size=acc.num_processes,
            progress=acc.is_main_process,
            existing=existing,
        )
        acc.wait_for_everyone()
        entries = read_manifest(prior_dir)[: s.num_prior]
        self.prior_dataset = PriorDataset(prior_dir, entries, self.spec, self.config.train.seed)

    def _loader(self, dataset, size: int, position: DataPosition) -> DataLoader:
        t, acc = self.config.train, self.accelerator
        sampler = EpochBatchSampler(
            size,
            t.batch_size,
            t.seed,
            acc.process_index,
            acc.num_processes,
            position,
            self.config.data.variants,
        )
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_pairs,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
            worker_init_fn=ignore_stop_signals if workers else None,
            # iter() draws the workers' base seed from this, not from the global CPU generator,
            # which a resumed run restores and (lora.dropout) draws from: resume stays exact.
            generator=torch.Generator().manual_seed(t.seed),
        )

    def _build_loaders(self) -> None:
        """Loaders starting at ``self.consumed`` micro-batches (each stream derives its epoch)."""
        t, acc = self.config.train, self.accelerator
        if self.config.subject.enabled:
            base = PairDataset(self.data.train, self.spec, t.seed, salt="subject")
            dataset = RepeatedDataset(base, self.config.subject.repeats)
        else:
            dataset = PairDataset(self.data.train, self.spec, t.seed)
        self.batches_per_epoch = len(dataset) // (t.batch_size * acc.num_processes)
        if self.batches_per_epoch == 0:
            raise TrainingError(
                f"{len(dataset)} training examples cannot fill one batch of {t.batch_size} on "
                f"{acc.num_processes} process(es): add data or lower train.batch_size"
            )
        # An empty cache also on resume: each example is recomputed when first met (exact).
        self.cache = FrozenCache.for_config(self.config.data, self.device)
        if self.cache is not None:
            dataset = self.cache.keyed(dataset, 0, acc.num_processes)
        self.loaders = [self._loader(dataset, len(dataset), self._position(len(dataset)))]
        if self.config.subject.enabled and self.prior_dataset is not None:
            size = len(self.prior_dataset)
            if size < t.batch_size * acc.num_processes:
                raise TrainingError(
                    f"{size} prior samples cannot fill one batch of {t.batch_size} per process: "
                    "raise subject.num_prior"
                )
            prior = self.prior_dataset
            if self.cache is not None:
                prior = self.cache.keyed(prior, 1, acc.num_processes)
            self.loaders.append(self._loader(prior, size, self._position(size)))

    def _position(self, size: int) -> DataPosition:
        per_epoch = size // (self.config.train.batch_size * self.accelerator.num_processes)
        epoch, batch = divmod(self.consumed, per_epoch)
        return DataPosition(epoch, batch)

    def _batches(self) -> Iterator[dict]:
        iterators = [iter(loader) for loader in self.loaders]
        while True:
            parts = [next(it) for it in iterators]
            if len(parts) == 1:
                yield parts[0]
                continue
            counts = ("skipped", "image_sum")  # plain numbers: added, not concatenated
            batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in counts}
            batch.update({k: sum(p[k] for p in parts) for k in counts})
            batch["prior_split"] = parts[0]["image"].shape[0]
            yield batch

    # -- checkpoints -----------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach().float().cpu().contiguous() for p in self.params}

    def _agree(self, value: int, op: str = "max") -> int:
        """``value`` reduced over the ranks (max or min) through the CPU control group."""
        if self.accelerator.num_processes == 1:
            return value
        flag = torch.tensor([value], dtype=torch.int64)
        ops = torch.distributed.ReduceOp
        reduce_op = ops.MAX if op == "max" else ops.MIN
        torch.distributed.all_reduce(flag, op=reduce_op, group=self._control_group)
        return int(flag)

    def _stop_requested(self) -> int:
        """The signal that asked this run to stop on any rank (0: none); all ranks agree."""
        return self._agree(self.stop.requested)

    def _save_failed(self, what: str, error: BaseException | None) -> TrainingError:
        latest = checkpoints.read_latest(self.out_dir / "checkpoints")
        kept = f"checkpoints/latest still names {latest}" if latest else "no checkpoint was kept"
        cause = _write_error(error) if error is not None else "another process failed (its message)"
        return TrainingError(
            f"could not write {what} at step {self.step}: {cause}. {kept}, which is complete. "
            "Free disk space (or fix the folder), then continue with --resume"
        )

    def save_checkpoint(self, export: bool = True) -> Path:
        """Write ``checkpoints/step-N`` whole, then point ``latest`` at it; with ``export`` also
        ``models/pbe-step-N.safetensors``. A step that already has its checkpoint (a resumed run
        that had finished, a stop right after a periodic save) is not written again."""
        from safetensors.torch import save_file

        acc, t = self.accelerator, self.config.train
        self._raise_if_non_finite()  # never save weights that a non-finite step has touched
        root = self.out_dir / "checkpoints"
        name = checkpoints.checkpoint_name(self.step)
        final, tmp = root / name, root / f".tmp-{name}"
        if self.last_checkpoint == final:
            return final
        error: BaseException | None = None
        if acc.is_main_process:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            except OSError as exc:
                error = exc
        if not self._agree(error is None, "min"):
            raise self._save_failed(f"checkpoint {name}", error)
        try:
            _save_torch(_rng_state(self.generators), tmp / f"rng-{acc.process_index}.pt")
        except Exception as exc:  # noqa: BLE001 - torch and safetensors wrap OSError
            error = exc
        if not self._agree(error is None, "min"):
            raise self._save_failed(f"checkpoint {name}", error)
        if acc.is_main_process:
            try:
                save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
                _save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")
                _save_torch(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
                if self.ema is not None:
                    save_file(self.ema.state_dict(), str(tmp / "ema.safetensors"))
                state = {
                    "step": self.step,
                    "consumed": self.consumed,
                    "skipped": self.skipped,
                    "samples": self.samples,
                    "world_size": acc.num_processes,
                    "config": self.config.to_dict(),
                }
                (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
                checkpoints.seal(tmp, self.step)
                checkpoints.publish(root, tmp, name)
            except Exception as exc:  # noqa: BLE001 - torch and safetensors wrap OSError
                error = exc
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs
        if not self._agree(error is None, "min"):
            raise self._save_failed(f"checkpoint {name}", error)
        self.last_checkpoint = final
        if acc.is_main_process:
            checkpoints.prune(root, t.keep_checkpoints)
            if export:
                try:
                    self.export(name)
                except Exception as exc:  # noqa: BLE001 - torch and safetensors wrap OSError
                    error = exc
        if not self._agree(error is None, "min"):
            exported = ", ".join(f"models/{n}" for n in self.export_names(name))
            raise self._save_failed(f"the model export {exported}", error)
        return final

    def _choose_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, chosen (and verified) by the main process for all."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        root = self.out_dir / "checkpoints"
        message = [None, None, []]  # checkpoint name, error, passed over
        if acc.is_main_process:
            checkpoints.remove_unfinished(root)
            choice = checkpoints.find_resumable(root)
            message[2] = choice.passed_over
            if choice.path is not None:
                message[0] = choice.path.name
            elif checkpoints.has_checkpoints(root):
                message[1] = (
                    f"--resume: no complete checkpoint in {root}; "
                    + "; ".join(choice.passed_over)
                    + ". Nothing was trained. Restore the files, or start a new run in another "
                    "out_dir"
                )
        if acc.num_processes > 1:
            broadcast_object_list(message)
        name, error, passed_over = message
        if error:
            raise ResumeError(error, acc.is_main_process)
        # The main process alone logs: elsewhere Python's last-resort handler would print these.
        if acc.is_main_process:
            for note in passed_over:
                log.warning("--resume passes over checkpoint %s", note)
            if name is None:
                log.warning(
                    "--resume: %s has no checkpoint yet: starting from step 0", self.out_dir
                )
        return None if name is None else root / name

    def _load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        acc = self.accelerator
        path = self._choose_checkpoint()
        if path is None:
            return
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if state["world_size"] != acc.num_processes:
            raise ResumeError(
                f"{path} was written by {state['world_size']} process(es) but this run has "
                f"{acc.num_processes}; an exact resume needs the same number of processes",
                acc.is_main_process,
            )
        self._check_resume_method(path, state["config"])
        trained = load_file(str(path / "trainable.safetensors"))
        params = dict(self.model.named_parameters())
        names = {id(p): n for n, p in params.items()}
        expected = {names[id(p)]: tuple(p.shape) for p in self.params}
        wrong = sorted(set(expected) ^ set(trained)) or [
            k for k in expected if tuple(trained[k].shape) != expected[k]
        ]
        if wrong:
            raise ResumeError(
                f"{path} holds other trained weights than this run trains ({len(trained)} "
                f"tensors there, {len(expected)} here; first difference {wrong[0]!r}): it was "
                "written with another train.method, [lora] section or model",
                acc.is_main_process,
            )
        with torch.no_grad():
            for key, value in trained.items():
                params[key].copy_(value.to(params[key].dtype))
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        self.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        factor = self.lr_schedule(self.lr_scheduler.last_epoch)  # this config's schedule
        for group, base in zip(
            self.optimizer.param_groups, self.lr_scheduler.base_lrs, strict=True
        ):
            group["lr"] = base * factor
        self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if self.ema is not None and (path / "ema.safetensors").is_file():
            self.ema.load_state_dict(load_file(str(path / "ema.safetensors"), device="cpu"))
        rng = torch.load(path / f"rng-{acc.process_index}.pt", weights_only=True)
        _set_rng_state(rng, self.generators)
        self.step, self.consumed = state["step"], state["consumed"]
        self.skipped, self.samples = state["skipped"], state["samples"]
        self.last_checkpoint = path
        self._build_loaders()
        log.info("resumed from %s at step %d", path, self.step)

    def _check_resume_method(self, path: Path, saved: dict) -> None:
        """A LoRA checkpoint resumes only into the same method and adapter layout."""
        from .config import resolved_method

        acc = self.accelerator
        train_saved = saved.get("train", {})
        subject_saved = saved.get("subject", {}).get("enabled", False)
        # A checkpoint from before train.method existed is a full fine-tuning run.
        method = resolved_method(train_saved.get("method", "full"), subject_saved)
        if method != self.config.method:
            raise ResumeError(
                f"{path} was trained with train.method = {method!r} but this run uses "
                f"{self.config.method!r}: set train.method = {method!r} to continue it, or start "
                "a new run in another out_dir",
                acc.is_main_process,
            )
        if method != "lora":
            return
        lora_saved = saved.get("lora", {})
        layout = ("rank", "alpha", "unet_modules", "exemplar")
        changed = [
            f"lora.{k} = {lora_saved.get(k)!r} there, {getattr(self.config.lora, k)!r} here"
            for k in layout
            if lora_saved.get(k) != getattr(self.config.lora, k)
        ]
        if changed:
            raise ResumeError(
                f"{path} was trained with another [lora] section ({'; '.join(changed)}): "
                "restore those settings to continue it, or start a new run in another out_dir",
                acc.is_main_process,
            )

    def export_names(self, tag: str) -> list[str]:
        """The files ``export`` writes under models/ for ``tag`` ('step-00002000', 'final')."""
        if self.config.method != "lora":
            return [f"pbe-{tag}.safetensors"]
        merged = [f"pbe-{tag}.safetensors"] if self.config.lora.export_merged else []
        return [f"pbe-lora-{tag}.safetensors", *merged]

    def export(self, tag: str) -> list[Path]:
        """Write models/ files for ``tag`` (EMA weights when kept): the single-file model, or in
        LoRA runs the LoRA file (and with lora.export_merged the merged single-file model)."""
        from exemplar_core.checkpoint import checkpoint_from_model, save_single_file

        from .lora import merged_model

        t = self.config.train
        paths = [self.out_dir / "models" / name for name in self.export_names(tag)]
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "training_step": str(self.step),
            "training_config": self.config.to_json(),
            "ema": str(self.ema is not None),
        }
        dtype = None if t.export_dtype == "fp32" else t.export_dtype
        if self.ema is not None:
            self.ema.swap_in()
        try:
            if self.config.method == "lora":
                self._export_lora(paths[0], metadata)
                model = merged_model(self.model) if len(paths) > 1 else None
            else:
                model = self.model
            if model is not None:
                save_single_file(checkpoint_from_model(model, metadata=metadata), paths[-1], dtype)
        finally:
            if self.ema is not None:
                self.ema.swap_out()
        return paths

    def _export_lora(self, path: Path, metadata: dict[str, str]) -> None:
        from exemplar_core.lora import save_lora

        from .lora import base_model_name, lora_metadata, lora_state

        m, lora = self.config.model, self.config.lora
        meta = lora_metadata(self.model, lora, base_model_name(m.init, m.path, m.architecture))
        tensors = lora_state(self.model, lora, self.lora_base)
        dtype = None if lora.export_dtype == "fp32" else lora.export_dtype
        save_lora(tensors, {**meta, **metadata}, path, dtype)

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        from exemplar_core.image_io import save_rgb

        from .validation import render_validation, validation_pairs

        t = self.config.train
        if not self.accelerator.is_main_process:
            return
        pairs = validation_pairs(self.data.validation, self.spec, t.seed)
        if not pairs:
            log.warning("no readable validation image: skipping validation")
            return
        if self.ema is not None:
            self.ema.swap_in()
        try:
            grid = render_validation(
                self.model,
                pairs,
                t.val_steps,
                t.val_similarity,
                t.val_scheduler,
                t.seed,
                self.device,
            )
        finally:
            if self.ema is not None:
                self.ema.swap_out()
            freeze_for_training(self.model, self.params)
        save_rgb(grid, self.out_dir / "validation" / f"step-{self.step:08d}.png", overwrite=True)
        if self.writer is not None:
            self.writer.add_image("validation", grid, self.step)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: dict) -> torch.Tensor:
        t, acc = self.config.train, self.accelerator
        gen = self.generators["noise"]
        model = self.model
        with torch.no_grad(), acc.autocast():
            compute = partial(compute_frozen, model, device=self.device)
            frozen = compute(batch) if self.cache is None else self.cache.outputs(batch, compute)
            latents, masked, keep, pooled = frozen.draw(gen, model.latent_scale)
        size = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        if t.noise_offset > 0:
            offset = torch.randn((size, latents.shape[1], 1, 1), generator=gen, device=self.device)
            noise = noise + t.noise_offset * offset
        timesteps = draw_timesteps(
            size, self.noise_scheduler.config.num_train_timesteps, self.timestep_weights, gen
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        drop = draw_dropout(
            size, t.cond_dropout, t.cond_dropout_mode, gen, self.generators["shared"], self.device
        )
        with acc.autocast():
            pred = self.denoiser(noisy, timesteps, masked.float(), keep, pooled, drop)
        return diffusion_loss(
            pred,
            noise,
            timesteps,
            self.alphas_cumprod,
            t.min_snr_gamma,
            batch.get("prior_split", 0),
            self.config.subject.prior_weight,
            None if t.masked_loss_weight == 1.0 else 1 + (t.masked_loss_weight - 1) * (1 - keep),
        )

    def _note_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss averaged over processes, still on the device. Remembers (in a device tensor,
        no host sync) the first step whose loss was not finite; ``_raise_if_non_finite`` reads it:
        every step on a CPU, at log steps and before checkpoints on an accelerator."""
        loss = self.accelerator.reduce(loss.detach().float(), reduction="mean")
        first = self._first_bad_step
        self._first_bad_step = torch.where(
            (first == 0) & ~torch.isfinite(loss), torch.full_like(first, self.step + 1), first
        )
        self._first_bad_loss = torch.where(first == 0, loss, self._first_bad_loss)
        return loss

    def _raise_if_non_finite(self) -> None:
        step = int(self._first_bad_step)
        if step > 0:
            where = self.last_checkpoint or "none yet (no checkpoint was written)"
            raise TrainingError(
                f"the loss became {float(self._first_bad_loss)} at step {step}: training stopped. "
                f"The last good checkpoint is {where} (resume with --resume). Usual causes: fp16 "
                "overflow (use bf16), a learning rate too high, or corrupt data"
            )

    def _is_log_step(self, step: int) -> bool:
        """Scalars are logged (and the loss read back) after this optimiser step."""
        return step % self.config.train.log_every == 0 or step == self.max_steps

    def _lr(self) -> float:
        return self.lr_scheduler.get_last_lr()[0]

    def run(self) -> dict:
        """Train to ``max_steps``; raises TrainingStopped after saving when SIGINT or SIGTERM
        arrived (any rank): all ranks stop after the same step."""
        with self.stop:
            return self._run()

    def _run(self) -> dict:
        self.setup()
        acc, t = self.accelerator, self.config.train
        start_step = self.step
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.max_steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        batches = self._batches()
        window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        window_samples, grad_norm = 0, 0.0
        try:
            stopped = self._stop_requested()  # a signal during set-up
            while not stopped and self.step < self.max_steps:
                batch = next(batches)
                self.consumed += 1
                self.skipped += int(batch["skipped"])
                self.data_checksum += batch["image_sum"]
                with acc.accumulate(self.denoiser):
                    loss = self.training_step(batch)
                    reduced = self._note_finite(loss)
                    if not self.defer_sync:
                        self._raise_if_non_finite()
                    acc.backward(loss)
                    # Without clipping the norm is only logged: computed on log steps alone.
                    logs = self._is_log_step(self.step + 1)
                    if acc.sync_gradients and (t.max_grad_norm > 0 or logs):
                        max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
                        grad_norm = acc.clip_grad_norm_(self.params, max_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window_loss = window_loss + reduced
                window_count += 1
                micro = batch["image"].shape[0] * acc.num_processes
                window_samples += micro
                self.samples += micro
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update()
                bar.update(1)
                if not self.defer_sync:  # on an accelerator the loss is read at log steps only
                    bar.set_postfix(loss=f"{float(reduced):.4f}", lr=f"{self._lr():.2e}")
                if self._is_log_step(self.step):
                    self._raise_if_non_finite()
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    mean_loss = float(window_loss) / window_count
                    if self.defer_sync:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self._lr():.2e}")
                    self._log_scalars(mean_loss, float(grad_norm), window_samples / elapsed)
                    window_loss, window_count, window_samples = 0.0, 0, 0
                    window_start = time.perf_counter()
                if self.step % t.checkpoint_every == 0 and self.step < self.max_steps:
                    self.save_checkpoint()
                stopped = self._stop_requested()
                if not stopped and t.validate_every and self.step % t.validate_every == 0:
                    self.validate()
        except BaseException:
            self._close_logs()
            raise
        finally:
            bar.close()
            # Release the DataLoader iterators (and their worker processes) here, in order,
            # rather than in a destructor after the process group is gone.
            batches.close()
        if stopped:
            saved = self.save_checkpoint(export=False) if self.step > start_step else None
            self._close_logs()
            raise TrainingStopped(
                stopped, self.step, saved or self.last_checkpoint, acc.is_main_process
            )
        # A signal from here on lets the run finish: only the end-of-run work is left.
        self.save_checkpoint(export=False)
        if acc.is_main_process:
            self.export("final")
        if not (t.validate_every and self.step % t.validate_every == 0):
            self.validate()
        return self._finish()

    def _log_scalars(self, loss: float, grad_norm: float, throughput: float) -> None:
        if self.writer is None:
            return
        lr = self._lr()
        self.writer.add_scalar("train/loss", loss, self.step)
        self.writer.add_scalar("train/lr", lr, self.step)
        self.writer.add_scalar("train/grad_norm", grad_norm, self.step)
        self.writer.add_scalar("train/samples_per_second", throughput, self.step)
        self.writer.add_scalar("data/skipped_total", self.skipped, self.step)
        log.info(
            "step %d loss %.5f lr %.3e grad_norm %.3f %.1f samples/s skipped %d",
            self.step,
            loss,
            lr,
            grad_norm,
            throughput,
            self.skipped,
        )

    def _close_logs(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()
            self.writer = None
        for attribute in ("_log_handler", "_console_handler"):
            handler = getattr(self, attribute, None)
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
                setattr(self, attribute, None)

    def _finish(self) -> dict:
        """Check that every rank holds the same weights; write summary.json."""
        acc = self.accelerator
        checksum = torch.tensor(
            [
                float(sum(p.detach().double().sum().item() for p in self.params)),
                float(sum(p.detach().double().abs().sum().item() for p in self.params)),
            ],
            device=self.device,
            dtype=torch.float64,
        )
        gathered = acc.gather(checksum[None]).cpu().tolist()
        data = torch.tensor([[self.data_checksum]], device=self.device, dtype=torch.float64)
        data_sums = [row[0] for row in acc.gather(data).cpu().tolist()]
        in_sync = all(row == gathered[0] for row in gathered)
        summary = {
            "step": self.step,
            "world_size": acc.num_processes,
            "rank_checksums": gathered,
            "ranks_in_sync": in_sync,
            "rank_data_checksums": data_sums,
            "skipped_samples": self.skipped,
            "samples": self.samples,
            "last_checkpoint": str(self.last_checkpoint),
        }
        if self.cache is not None:
            summary["cache"] = self.cache.counts()  # the main process's
        if acc.is_main_process:
            if self.cache is not None:
                log.info(
                    "frozen-output cache: %(computed)d examples computed, %(reused)d reused, "
                    "%(bytes)d bytes held",
                    summary["cache"],
                )
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=1))
            log.info("finished at step %d; ranks in sync: %s", self.step, in_sync)
            self._close_logs()
        acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank leaves while another still needs it
        if not in_sync:
            raise TrainingError(f"the ranks' weights diverged: checksums {gathered}")
        return summary


def _to_toml(config: TrainConfig) -> str:
    from .config import to_toml

    return to_toml(config)


# Multi-process runs keep their finished Trainer here until the process leaves with os._exit
# (train/__main__.py): freeing DDP's reducer destroys the gloo process group, whose destructor
# joins worker threads that may wait for the GIL this thread holds (a deadlock).
_FINISHED: list[Trainer] = []


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) a training run; returns the summary written to summary.json."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run()
    finally:
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            _FINISHED.append(trainer)  # also when the run failed: its reducer holds the group


__all__ = [
    "LrSchedule",
    "ResumeError",
    "Trainer",
    "TrainingError",
    "TrainingStopped",
    "diffusion_loss",
    "train",
    "warmup_factor",
]
