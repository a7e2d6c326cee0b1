"""Running a batch: the jobs left in an out folder, loaded a batch at a time, edited with
``Editor.edit_batch`` and written atomically with their results records; one process's share
of a sharded run; a clean stop on SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..editor import EditRequest, EditResult, EditSettings
from ..files import atomic_write
from .jobs import SETTING_FIELDS, Job, JobProblem, job_settings
from .results import (
    ResultsLog,
    RunFingerprint,
    job_digest,
    load_results,
    output_in_the_way,
    output_path,
    plan,
    read_records,
    record,
)

log = logging.getLogger(__name__)

# (rank, world-size) variables of the launchers: torchrun / accelerate launch, then MPI
# (accelerate's multi-CPU launch). Read directly: accelerate's PartialState reports one process
# on CPU processes that torchrun started, and sharding needs no process group.
_RANK_VARIABLES = (
    ("RANK", "WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)


class BatchEditor(Protocol):
    def edit_batch(
        self, requests: Sequence[EditRequest], max_batch: int = 8
    ) -> list[EditResult | Exception]: ...


@dataclass(frozen=True)
class Shard:
    """This process's place in a sharded run: process ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def take(self, jobs: Sequence[Job]) -> list[Job]:
        """This process's jobs: the i-th of the id-sorted manifest when i % world == rank. Taken
        from the whole manifest, not from what is left to do, so that every process agrees
        without talking to the others however far each has got."""
        ordered = sorted(jobs, key=lambda job: job.id)
        return ordered[self.rank :: self.world]


def current_shard(environ: Mapping[str, str] | None = None) -> Shard:
    """The shard this process runs, from the launcher's variables (one process when none)."""
    environ = os.environ if environ is None else environ
    for rank_name, world_name in _RANK_VARIABLES:
        if rank_name in environ and world_name in environ:
            rank, world = int(environ[rank_name]), int(environ[world_name])
            local = int(environ.get("LOCAL_RANK", environ.get("MPI_LOCALRANKID", rank)))
            if not 0 <= rank < world:
                raise ValueError(f"{rank_name}={rank} is not below {world_name}={world}")
            return Shard(rank, world, local)
    return Shard()


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs. ``defaults``: the command line's EditSettings fields (a job's own
    settings win); ``default_names``: what the user called each (``--scale``)."""

    out_dir: Path
    defaults: Mapping[str, object]
    default_names: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 8
    retry_failed: bool = False
    overwrite: bool = False
    resize_mask: bool = False
    progress: bool = True
    # What defines the outputs (claimed in the folder by the caller); None: the defaults alone.
    fingerprint: RunFingerprint | None = None


@dataclass
class BatchSummary:
    """What a run (one process's share of it) did."""

    planned: int = 0
    done: int = 0
    skipped: int = 0
    skipped_failed: int = 0  # skipped jobs whose last attempt had failed (--retry-failed)
    failed: int = 0
    problems: int = 0
    seconds: float = 0.0  # from the first job loaded to the last output written
    stopped_by: str | None = None  # the signal's name when a signal stopped the run

    @property
    def all_done(self) -> bool:
        """Every job of the manifest finished without error (none failed now or before)."""
        return not (self.failed or self.skipped_failed or self.problems or self.stopped_by)

    @property
    def edits_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"{self.done} done, {self.skipped} skipped"
            + (
                f" ({self.skipped_failed} failed before: --retry-failed)"
                if self.skipped_failed
                else ""
            )
            + f", {self.failed} failed"
            + (f", {self.problems} manifest lines not run" if self.problems else "")
            + f" in {self.seconds:.1f}s ({self.edits_per_second:.2f} edits/s)"
        )
        if self.stopped_by:
            left = self.planned - self.done - self.failed
            text += f"; stopped by {self.stopped_by} with {left} left: run again to go on"
        return text


class StopFlag:
    """SIGINT/SIGTERM: the first finishes the batch in hand (its results written), a second
    stops at once (atomic writes leave no partial file)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name}: stopping after the current batch (again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def settings_record(settings: EditSettings) -> dict[str, object]:
    """Every EditSettings field of ``settings`` by name (what a results record keeps)."""
    return {name: getattr(settings, name) for name in SETTING_FIELDS}


def record_problems(log: ResultsLog, out_dir: Path, problems: Sequence[JobProblem]) -> None:
    """Record each manifest problem once in the folder (a resumed run does not repeat it)."""
    seen = {
        (entry.get("line"), entry.get("error"))
        for entry in read_records(out_dir)
        if entry.get("stage") == "manifest"
    }
    for problem in problems:
        if (problem.line, problem.message) not in seen:
            log.append(
                record(problem.job_id, line=problem.line, error=problem.message, stage="manifest")
            )


def remove_stale_temps(out_dir: Path, jobs: Sequence[Job]) -> None:
    """Temp files that a killed run left beside this process's outputs (``atomic_write``'s
    ``.<name>.<random>.tmp``): written by this pack, never a user's file."""
    for job in jobs:
        name = output_path(out_dir, job.id).name
        for temp in Path(out_dir).glob(f".{name}.*.tmp"):
            temp.unlink(missing_ok=True)


def start_run(
    log: ResultsLog,
    jobs: Sequence[Job],
    problems: Sequence[JobProblem],
    fingerprint: RunFingerprint,
    retry_failed: bool,
    overwrite: bool,
    summary_type: type[BatchSummary] = BatchSummary,
    record_here: bool = True,
) -> tuple[list[Job], BatchSummary, dict[str, str]]:
    """The opening of a run into ``log``'s folder, shared by the batch editor and the farm:
    -> (the jobs to do, the summary so far, job id -> ``job_digest``). Plans against the
    folder's results, removes the temp files a killed run left beside the outputs to do, and
    records the manifest's problems (when ``record_here``: one process of a sharded run)."""
    out_dir = log.path.parent
    digests = {job.id: job_digest(fingerprint, job) for job in jobs}
    done = load_results(out_dir)
    todo, skipped = plan(jobs, done, retry_failed, overwrite, out_dir, digests)
    remove_stale_temps(out_dir, todo)
    summary = summary_type(
        planned=len(todo),
        skipped=len(skipped),
        skipped_failed=sum(done[job.id].get("error") is not None for job in skipped),
        problems=len(problems),
    )
    if record_here:
        record_problems(log, out_dir, problems)
    return todo, summary, digests


def _batch_key(settings: EditSettings | None) -> tuple:
    """Jobs whose settings may share a UNet batch sort next to each other."""
    if settings is None:
        return ()
    return (
        str(settings.size),
        settings.whole_image,
        settings.steps,
        settings.scheduler,
        settings.similarity,
        settings.eta,
    )


def run_batch(
    editor: BatchEditor,
    jobs: Sequence[Job],
    options: BatchOptions,
    problems: Sequence[JobProblem] = (),
    shard: Shard | None = None,
) -> BatchSummary:
    """Run this process's share of ``jobs`` into ``options.out_dir``; return what it did.

    Jobs already finished there are skipped (failed ones too, unless ``retry_failed``;
    everything is redone with ``overwrite``). Each job's files are read when its batch comes up,
    ``options.batch_size`` jobs at a time; a job that cannot be read, set up or edited gets its
    error recorded and the others go on. Outputs are PNGs named by job id, written atomically
    after their record."""
    shard = shard or Shard()
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = options.fingerprint or RunFingerprint({}, dict(options.defaults))
    worker = shard.rank
    log = ResultsLog(out_dir, shard.rank if shard.sharded else None)
    todo, summary, digests = start_run(
        log,
        shard.take(jobs),
        problems,
        fingerprint,
        options.retry_failed,
        options.overwrite,
        record_here=shard.rank == 0,
    )

    def attempt(job: Job, settings: EditSettings | None, seconds: float, **values) -> dict:
        return record(
            job.id,
            line=job.line,
            seed=settings.seed if settings is not None else None,
            settings=settings_record(settings) if settings is not None else None,
            seconds=round(seconds, 4),
            worker=worker,
            digest=digests[job.id],
            **values,
        )

    def fail(job: Job, stage: str, error: BaseException | str, settings=None, seconds=0.0):
        log.append(attempt(job, settings, seconds, error=str(error), stage=stage))
        summary.failed += 1

    with log, StopFlag() as stop:
        runnable: list[tuple[Job, EditSettings]] = []
        for job in todo:
            try:
                runnable.append((job, job_settings(job, options.defaults, options.default_names)))
            except ValueError as err:
                fail(job, "settings", err)
        runnable.sort(key=lambda item: _batch_key(item[1]))
        bar = _progress_bar(len(todo), summary.failed, shard, options.progress)
        start = time.perf_counter()
        try:
            size = max(1, options.batch_size)
            for first in range(0, len(runnable), size):
                if stop.signal_name is not None:
                    break
                chunk_start = time.perf_counter()
                chunk = runnable[first : first + size]
                requests: list[EditRequest] = []
                loaded: list[tuple[Job, EditSettings]] = []
                for job, settings in chunk:
                    in_the_way = output_in_the_way(out_dir, job.id, options.overwrite)
                    if in_the_way is not None:
                        fail(job, "write", in_the_way, settings)
                        continue
                    try:
                        request = _load_request(job, settings, options.resize_mask)
                    except (ValueError, OSError) as err:
                        fail(job, "load", err, settings)
                        continue
                    requests.append(request)
                    loaded.append((job, settings))
                results = editor.edit_batch(requests, max_batch=size) if requests else []
                share = (time.perf_counter() - chunk_start) / max(1, len(chunk))
                for (job, settings), result in zip(loaded, results, strict=True):
                    if isinstance(result, Exception):
                        fail(job, "edit", result, settings, share)
                        continue
                    try:
                        out = output_path(out_dir, job.id)
                        entry = attempt(job, settings, share, output=out.name)
                        _write(log, out, result, entry, options.overwrite)
                        summary.done += 1
                    except (ValueError, OSError) as err:
                        fail(job, "write", err, settings, share)
                summary.seconds = time.perf_counter() - start
                bar.n = summary.done + summary.failed
                bar.set_postfix_str(f"{summary.edits_per_second:.2f} edits/s", refresh=False)
                bar.refresh()
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - start
        if (
            summary.done + summary.failed < summary.planned
        ):  # a signal after the last batch stops nothing
            summary.stopped_by = stop.signal_name
    return summary


def _load_request(job: Job, settings: EditSettings, resize_mask: bool) -> EditRequest:
    """Read a job's files into an EditRequest (as ``edit`` reads its options' files); ValueError
    (the file and the problem) if not."""
    from ..cli import exemplar_mask_of, fit_mask
    from ..image_io import load_exemplar, load_mask, load_rgb

    source = load_rgb(job.source, "source")
    edit_mask = fit_mask(
        source,
        load_mask(job.mask, "mask"),
        resize_mask,
        f" ({job.mask.name}; or pass --resize-mask)",
    )
    names = (f"exemplar {job.exemplar.name}", f"exemplar mask of job {job.id}")
    exemplar, exemplar_mask = exemplar_mask_of(
        load_exemplar(job.exemplar, "exemplar"),
        load_mask(job.exemplar_mask, "exemplar mask") if job.exemplar_mask is not None else None,
        names,
        say=log.info,
    )
    return EditRequest(source, edit_mask, exemplar, settings, exemplar_mask)


def _write(log: ResultsLog, out: Path, result: EditResult, entry: dict, overwrite: bool) -> None:
    """The output PNG ``out``, written atomically; its record ``entry`` is appended once the
    image is on disk under its temp name and before the rename, so an output never exists
    without a record."""
    from PIL import Image

    from ..image_io import to_uint8

    image = Image.fromarray(to_uint8(result.image))

    def write(temp: Path) -> None:
        image.save(temp, format="PNG")
        log.append(entry)

    atomic_write(out, write, overwrite=overwrite)


def _progress_bar(total: int, already: int, shard: Shard, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=already,
        desc="batch" if not shard.sharded else f"batch rank {shard.rank}",
        unit="edit",
        position=shard.local_rank if shard.sharded else None,
        disable=not enabled,
        dynamic_ncols=True,
    )
