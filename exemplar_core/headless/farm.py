"""A render farm: a batch manifest's jobs spread over several ComfyUI servers.

    python -m exemplar_core headless --manifest jobs.jsonl --out results/ \\
        --server http://gpu1:8188 --server http://gpu2:8188

Each server gets its next job when it finishes one (``per_server`` in flight each, 1 by default:
ComfyUI runs one prompt at a time, a second one in its queue hides the uploads and downloads).
A job uploads its own source, mask, exemplar (and exemplar mask) to the server that runs it,
sets its settings on the workflow's nodes (``SETTING_INPUTS``), queues the workflow and saves
the first image it outputs (in node-id order) to ``<out>/<id>.png``, written atomically.
Every attempt is appended to the batch editor's ``results.jsonl`` with ``"worker"`` = the server,
so a rerun resumes exactly as ``python -m exemplar_core batch`` does (same manifest reader,
results log, fingerprint and plan: ``exemplar_core.batch``).

A server that stops answering is dropped (logged) and its job goes back to the queue for
another server, at most ``tries`` times in all (a job that takes every server down with it is
then recorded as failed); the run goes on while any server lives. When none is left, the jobs
not done are left out of the results, so the next run does them. SIGINT/SIGTERM stop it as
they stop the batch editor: the jobs in flight finish, a second signal stops at once.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import json
import threading
import time
import urllib.error
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import node_ids
from ..batch.cli import EXIT_SIGNAL
from ..batch.jobs import Job, ManifestError, job_settings, read_manifest
from ..batch.results import (
    RESULTS_NAME,
    ResultsLog,
    RunFingerprint,
    output_in_the_way,
    output_path,
    record,
)
from ..batch.run import BatchSummary, StopFlag, start_run
from ..editor import EditSettingError
from ..files import DestinationError, atomic_write
from .cli import parse_sets
from .client import DEFAULT_SERVER, Client, read_input
from .errors import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, HeadlessError, ServerUnreachable
from .run import apply_options, node_order, prepare_out_dir, queue_and_wait, say, view_path
from .workflow import find_node, load_workflow

# The workflow the farm runs when none is given: the basic template's API twin, whose loaders
# (source, mask, exemplar) are exactly what a manifest line names.
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows/api/basic_exemplar_edit.json"
KSAMPLER = "KSampler"
# A job's edit setting (EditSettings' field name) -> the node inputs that take it.
SETTING_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "seed": ((node_ids.INPAINT_SAMPLER, "seed"), (KSAMPLER, "seed")),
    "steps": ((node_ids.INPAINT_SAMPLER, "steps"), (KSAMPLER, "steps")),
    # ComfyUI's KSampler calls the similarity (guidance) scale cfg.
    "similarity": ((node_ids.INPAINT_SAMPLER, "similarity"), (KSAMPLER, "cfg")),
    "scheduler": ((node_ids.INPAINT_SAMPLER, "sampler_name"), (KSAMPLER, "sampler_name")),
    "size": ((node_ids.INPAINT_SAMPLER, "resolution"), (node_ids.CROP_FOR_EDIT, "resolution")),
    "context_margin": (
        (node_ids.INPAINT_SAMPLER, "context_margin"),
        (node_ids.CROP_FOR_EDIT, "context_margin"),
    ),
    "feather": ((node_ids.INPAINT_SAMPLER, "feather"), (node_ids.CROP_FOR_EDIT, "feather")),
    "mask_grow": ((node_ids.INPAINT_SAMPLER, "mask_grow"), (node_ids.CROP_FOR_EDIT, "mask_grow")),
    "mask_blur": ((node_ids.INPAINT_SAMPLER, "mask_blur"), (node_ids.CROP_FOR_EDIT, "mask_blur")),
    "color_match": (
        (node_ids.INPAINT_SAMPLER, "color_match"),
        (node_ids.STITCH_EDIT, "color_match"),
    ),
    "exemplar_resize": ((node_ids.EXEMPLAR_ENCODE, "resize"),),
    "exemplar_expand": ((node_ids.EXEMPLAR_ENCODE, "object_expand"),),
}
# The editor's schedulers -> ComfyUI's samplers; PLMS ("pndm") has no ComfyUI sampler.
SAMPLER_NAMES = {"ddim": "ddim", "euler_a": "euler_ancestral", "dpmpp_2m": "dpmpp_2m"}
EXEMPLAR_MASK_TITLE = "exemplar mask"


class JobError(Exception):
    """This job cannot run (its files, its settings, the server's refusal): recorded with the
    stage where it failed (``results.RECORD_KEYS``), not retried; the other jobs go on."""

    def __init__(self, message: str, stage: str = "settings") -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class FarmOptions:
    manifest: Path
    servers: list[str]
    out: Path
    workflow: Path = DEFAULT_WORKFLOW
    sets: list[tuple[str, Any]] = field(default_factory=list)  # ("TITLE.INPUT", value)
    model: str | None = None
    seed: int | None = None
    steps: int | None = None
    per_server: int = 1
    tries: int = 3  # attempts of one job on servers that went down, at most
    timeout: float = 600.0  # seconds one job may take on its server
    retry_failed: bool = False
    overwrite: bool = False
    quiet: bool = False


@dataclass
class FarmSummary(BatchSummary):
    """The batch editor's summary (``line()``, ``all_done``) and the farm's own: the jobs left
    when every server was down, the servers dropped."""

    not_done: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def job_prompt(base: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """A copy of ``base`` with a job's settings on its nodes, and the effective value of every
    setting the workflow takes (the job's, else the workflow's own). Raises JobError naming a
    setting the workflow cannot take."""
    prompt = copy.deepcopy(base)
    for name, value in settings.items():
        if name not in SETTING_INPUTS:
            raise JobError(
                f"setting {name!r} has no input in a ComfyUI workflow; the settings a job can "
                f"give here are {', '.join(sorted(SETTING_INPUTS))} (set others on the "
                f"workflow with --set TITLE.INPUT=VALUE)"
            )
        if name == "scheduler":
            if value not in SAMPLER_NAMES:
                raise JobError(
                    f"scheduler {value!r} has no ComfyUI sampler; expected one of "
                    f"{', '.join(SAMPLER_NAMES)} (or set sampler_name with --set)"
                )
            value = SAMPLER_NAMES[value]
        elif name == "size" and value is None:
            value = 0  # the nodes' "native resolution"
        count = 0
        for class_type, input_name in SETTING_INPUTS[name]:
            for node in prompt.values():
                inputs = node.get("inputs", {})
                if node.get("class_type") == class_type and not isinstance(
                    inputs.get(input_name, 0), list
                ):
                    inputs[input_name] = value
                    count += 1
        if not count:
            takers = " or ".join(f"{c}.{i}" for c, i in SETTING_INPUTS[name])
            raise JobError(f"the job sets {name!r} but the workflow has no {takers} to take it")
    return prompt, effective_settings(prompt)


def effective_settings(prompt: dict[str, Any]) -> dict[str, Any]:
    """Each setting's value on the first node (in id order) that takes it."""
    found: dict[str, Any] = {}
    for name, takers in SETTING_INPUTS.items():
        for class_type, input_name in takers:
            for node_id in sorted(prompt, key=node_order):
                node = prompt[node_id]
                value = node.get("inputs", {}).get(input_name)
                if node.get("class_type") == class_type and not isinstance(
                    value, (list, type(None))
                ):
                    found.setdefault(name, value)
    return found


def add_exemplar_mask_loader(prompt: dict[str, Any]) -> str:
    """The id of the loader for a job's exemplar mask: the workflow's own ``exemplar mask``
    loader, else a ``LoadImageMask`` (red channel, white = the object) added and linked to every
    Exemplar Encode, which then reads its white as the object."""
    titles = {str(n.get("_meta", {}).get("title", "")).lower() for n in prompt.values()}
    if EXEMPLAR_MASK_TITLE in titles:
        return find_node(prompt, EXEMPLAR_MASK_TITLE)
    encoders = [n for n in prompt.values() if n.get("class_type") == node_ids.EXEMPLAR_ENCODE]
    if not encoders:
        raise JobError(
            "the job gives an exemplar mask but the workflow has no Exemplar Encode nor an "
            f"image loader titled {EXEMPLAR_MASK_TITLE!r} to take it"
        )
    node_id = str(max((int(i) for i in prompt if i.isdigit()), default=0) + 1)
    prompt[node_id] = {
        "class_type": "LoadImageMask",
        "inputs": {"image": "", "channel": "red"},
        "_meta": {"title": EXEMPLAR_MASK_TITLE},
    }
    for encoder in encoders:
        encoder["inputs"]["exemplar_mask"] = [node_id, 0]
        encoder["inputs"]["exemplar_mask_marks"] = "object"
    return node_id


def workflow_hash(prompt: dict[str, Any]) -> str:
    """SHA-256 of the workflow as the jobs start from it (after --model/--seed/--steps/--set)."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


def first_output_image(entry: dict[str, Any]) -> dict[str, Any]:
    for node_id in sorted(entry.get("outputs", {}), key=node_order):
        for image in entry["outputs"][node_id].get("images", []):
            if image.get("type") == "output":
                return image
    raise JobError("the workflow finished but saved no image (it needs a SaveImage node)")


# Errors that mean the server went away during a request, not that the job is bad.
SERVER_DOWN = (ServerUnreachable, ConnectionError, TimeoutError, http.client.HTTPException)


def typed_settings(job: Job) -> dict[str, Any]:
    """The job's own settings, read as their types and checked as the batch editor checks them
    (``jobs.job_settings``); JobError naming the setting when one is refused."""
    try:
        checked = job_settings(job, {})
    except EditSettingError as err:
        raise JobError(str(err)) from err
    return {name: getattr(checked, name) for name in job.settings}


class Farm:
    """One run over live servers: a queue of jobs, one worker thread per server slot."""

    def __init__(
        self,
        options: FarmOptions,
        servers: list[str],
        base: dict[str, Any],
        log: ResultsLog,
        digests: dict[str, str],
    ) -> None:
        self.options = options
        self.base = base
        self.log = log
        self.digests = digests  # job id -> results.job_digest, kept in each record
        self.lock = threading.Condition()
        self.pending: deque[tuple[Job, int, list[str]]] = deque()  # job, tries, servers lost
        self.in_flight = 0
        self.live = set(servers)
        self.outcomes: dict[str, str | None] = {}  # job id -> error of its last record
        self.summary = FarmSummary()
        self.total = 0
        self.stop: StopFlag | None = None

    def say(self, text: str) -> None:
        say(self.options.quiet, text)

    def attempt(self, client: Client, job: Job) -> tuple[bytes, dict[str, Any]]:
        """Run one job on ``client``'s server: its output image's bytes and effective settings.
        Raises JobError for the job's own faults, one of SERVER_DOWN when the server went away."""
        in_the_way = output_in_the_way(self.options.out, job.id, self.options.overwrite)
        if in_the_way is not None:  # refused before its files are uploaded and it is run
            raise JobError(in_the_way, "write")
        prompt, settings = job_prompt(self.base, typed_settings(job))
        images = {"source": job.source, "mask": job.mask, "exemplar": job.exemplar}
        if job.exemplar_mask is not None:
            images[EXEMPLAR_MASK_TITLE] = job.exemplar_mask
        loaders = {
            title: add_exemplar_mask_loader(prompt)
            if title == EXEMPLAR_MASK_TITLE
            else find_node(prompt, title)
            for title in images
        }
        files = {}
        for title, path in images.items():
            try:
                files[title] = read_input(Path(path))
            except HeadlessError as err:
                raise JobError(str(err), "load") from err
        try:
            for title, path in images.items():
                name = client.upload_image(Path(path), files[title])
                prompt[loaders[title]]["inputs"]["image"] = name
            entry = queue_and_wait(client, prompt, self.options.timeout, True)
            data = client.get_bytes(view_path(first_output_image(entry)))
        except SERVER_DOWN:
            raise
        except HeadlessError as err:  # refused or failed by ComfyUI: the job's own fault
            raise JobError(str(err), "edit") from err
        except urllib.error.HTTPError as err:
            raise JobError(f"HTTP {err.code} from {client.server}: {err.reason}", "edit") from err
        return data, settings

    def worker(self, server: str) -> None:
        client = Client(server, timeout=min(self.options.timeout, 60.0))
        while True:
            with self.lock:
                # Idle while jobs are in flight: one may come back when its server goes down.
                while not self.pending and self.in_flight and self.serving(server):
                    self.lock.wait()
                if not self.pending or not self.serving(server):
                    return
                job, tries, lost = self.pending.popleft()
                self.in_flight += 1
            start = time.monotonic()
            back = None
            try:
                data, settings = self.attempt(client, job)
                self.finish(job, server, data, settings, time.monotonic() - start)
            except SERVER_DOWN as err:
                self.drop(server, err)
                back = (job, tries + 1, [*lost, server])
            except JobError as err:
                self.record(job, server, time.monotonic() - start, error=str(err), stage=err.stage)
            except Exception as err:  # an answer this runner cannot read: this job fails alone
                error = f"unexpected {type(err).__name__} from {server}: {err}"
                self.record(job, server, time.monotonic() - start, error=error, stage="edit")
            finally:
                with self.lock:
                    self.in_flight -= 1
                    if back is not None:
                        self.retry(*back)
                    self.lock.notify_all()

    def serving(self, server: str) -> bool:
        """Whether ``server`` is up and the run goes on (no SIGINT/SIGTERM came)."""
        return server in self.live and (self.stop is None or self.stop.signal_name is None)

    def finish(
        self, job: Job, server: str, data: bytes, settings: dict[str, Any], seconds: float
    ) -> None:
        """The output, written atomically; its record is appended once the image is on disk
        under its temp name and before the rename (as the batch editor does), so an output
        never exists without its record."""
        target = output_path(self.options.out, job.id)

        def write(temp: Path) -> None:
            temp.write_bytes(data)
            self.record(job, server, seconds, output=target.name, settings=settings)

        try:
            atomic_write(target, write, overwrite=self.options.overwrite)
        except (DestinationError, OSError) as err:
            self.record(job, server, seconds, error=f"cannot write {target}: {err}", stage="write")

    def retry(self, job: Job, tries: int, lost: list[str]) -> None:
        """Put a job whose server went down back in the queue, or record it as failed once it
        was on ``tries`` servers that went down (it may be what brings them down)."""
        if tries < self.options.tries:
            self.pending.appendleft((job, tries, lost))
            self.say(f"{job.id}: back in the queue (try {tries + 1} of {self.options.tries})")
            return
        self.record(
            job,
            lost[-1],
            0.0,
            error=f"ComfyUI went down {tries} times while running this job (on "
            f"{', '.join(lost)}); it may be what stops the server: read the servers' logs, then "
            f"rerun with --retry-failed",
            stage="edit",
        )

    def drop(self, server: str, err: BaseException) -> None:
        with self.lock:
            if server in self.live:
                self.live.discard(server)
                self.summary.dropped.append(server)
                left = len(self.live)
                self.say(
                    f"dropped server {server} ({err or type(err).__name__}); "
                    f"{left} server{'' if left == 1 else 's'} left"
                )

    def record(self, job: Job, server: str, seconds: float, **values: Any) -> None:
        settings = values.get("settings")
        seed = settings.get("seed") if settings else None
        entry = record(
            job.id,
            line=job.line,
            seed=seed,
            seconds=round(seconds, 3),
            worker=server,
            digest=self.digests[job.id],
            **values,
        )
        with self.lock:
            self.log.append(entry)
            self.outcomes[job.id] = values.get("error")  # a job's last record is its outcome
            error = values.get("error")
            outcome = "done" if error is None else f"failed: {error}"
            self.say(
                f"[{len(self.outcomes)}/{self.total}] {job.id} on {server} ({seconds:.1f} s): "
                f"{outcome}"
            )

    def run(self, todo: list[Job]) -> FarmSummary:
        self.total = len(todo)
        self.pending.extend((job, 0, []) for job in todo)
        threads = [
            threading.Thread(target=self.worker, args=(server,), daemon=True)
            for server in sorted(self.live)
            for _ in range(self.options.per_server)
        ]
        # SIGINT/SIGTERM as the batch editor takes them: the first lets the jobs in flight
        # finish (their results recorded) and starts no other, a second stops at once.
        with StopFlag() as stop:
            self.stop = stop
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
                    if stop.signal_name is not None:
                        with self.lock:
                            self.lock.notify_all()  # idle workers: time to go
        self.summary.not_done = sorted(job.id for job, _, _ in self.pending)
        if stop.signal_name is not None:
            self.summary.stopped_by = stop.signal_name
        elif self.summary.not_done:
            self.summary.stopped_by = "every server going down"
        self.summary.failed = sum(error is not None for error in self.outcomes.values())
        self.summary.done = len(self.outcomes) - self.summary.failed
        return self.summary


def check_servers(servers: list[str], quiet: bool) -> list[str]:
    """The servers that answer now (each tried once, briefly); the others are left out with a
    message. Raises HeadlessError when none answers."""
    live = []
    for server in servers:
        try:
            Client(server).check_reachable()
        except ServerUnreachable as err:
            say(quiet, f"leaving out {server}: {err}")
            continue
        live.append(server)
    if not live:
        raise HeadlessError(
            f"none of the servers answers ({', '.join(servers)}); expected a running ComfyUI "
            f"at each --server",
            EXIT_USAGE,
        )
    return live


def fingerprint(base: dict[str, Any]) -> RunFingerprint:
    """What defines this run's outputs: the models the workflow loads (on the servers: known by
    name only), the settings it gives every job and the whole workflow's hash."""
    models = sorted(
        str(node["inputs"]["model_name"])
        for node in base.values()
        if node.get("class_type") == node_ids.LOADER and "model_name" in node.get("inputs", {})
    )
    return RunFingerprint(
        checkpoint={"name": ", ".join(models)},
        defaults=effective_settings(base),
        runner="headless",
        workflow=workflow_hash(base),
    )


def run_farm(options: FarmOptions) -> FarmSummary:
    """Run a manifest's jobs over ``options.servers``; the summary. Raises HeadlessError before
    any job when the workflow, the manifest, ``--out`` or every server is wrong."""
    base = load_workflow(options.workflow)
    apply_options(base, options.model, options.seed, options.steps, options.sets)
    for title in ("source", "mask", "exemplar"):
        find_node(base, title)  # a workflow without the loaders a job fills is refused at once
    try:
        jobs, problems = read_manifest(options.manifest)
    except ManifestError as err:
        raise HeadlessError(str(err), EXIT_USAGE) from err
    out = prepare_out_dir(options.out)
    servers = check_servers(list(dict.fromkeys(options.servers)), options.quiet)
    run_fingerprint = fingerprint(base)
    try:
        run_fingerprint.claim(out, options.overwrite)
    except DestinationError as err:
        raise HeadlessError(str(err), EXIT_USAGE) from err
    start = time.monotonic()
    with ResultsLog(out) as log:
        todo, summary, digests = start_run(
            log,
            jobs,
            problems,
            run_fingerprint,
            options.retry_failed,
            options.overwrite,
            FarmSummary,
        )
        for problem in problems:
            say(options.quiet, f"manifest {problem}")
        farm = Farm(options, servers, base, log, digests)
        farm.summary = summary
        say(options.quiet, f"{len(todo)} jobs to do on {len(servers)} servers")
        summary = farm.run(sorted(todo, key=lambda job: job.id))
    summary.seconds = time.monotonic() - start
    return summary


def run_farm_args(args: argparse.Namespace) -> int:
    """``--manifest``: parsed arguments -> a farm run; prints a summary line, returns the exit
    code (0 every job done, 1 a job failed or was left undone). Raises HeadlessError."""
    one_run = [f"--{name}" for name in ("source", "mask", "exemplar") if getattr(args, name)]
    if args.image:
        one_run.append("--image")
    if one_run:
        raise HeadlessError(
            f"--manifest names each job's images; {', '.join(one_run)} belongs to one workflow "
            f"run: leave it out, or put the images in the manifest",
            EXIT_USAGE,
        )
    options = FarmOptions(
        manifest=args.manifest,
        servers=args.server or [DEFAULT_SERVER],
        out=args.out,
        workflow=args.workflow or DEFAULT_WORKFLOW,
        sets=parse_sets(args.set),
        model=args.model,
        seed=args.seed,
        steps=args.steps,
        per_server=args.per_server or FarmOptions.per_server,
        tries=args.tries or FarmOptions.tries,
        timeout=args.timeout,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    summary = run_farm(options)
    print(f"{summary.line()}; results in {options.out / RESULTS_NAME}", flush=True)
    if summary.stopped_by in EXIT_SIGNAL:
        return EXIT_SIGNAL[summary.stopped_by]
    return EXIT_OK if summary.all_done else EXIT_SERVER_ERROR
