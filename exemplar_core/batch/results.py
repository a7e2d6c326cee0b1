"""A batch's out folder: the results log, the run's fingerprint, where outputs go and which jobs
are left to run.

``results.jsonl`` (``results.rank<r>.jsonl`` for process r of a sharded run, so no two processes
write one file) holds one JSON object per line: one per finished attempt of a job, and one per
manifest line that is no job. Keys (``RECORD_KEYS``):

- ``id``: the job id (null for a manifest line that names none); ``line``: its manifest line;
- ``output``: the output's path relative to the out folder, null on error;
- ``seed``: the job's seed; ``settings``: every ``EditSettings`` field as the job ran (null when
  its settings were refused);
- ``seconds``: the wall time of the job's share of its batch (loading, editing, writing);
- ``error``: null, or the message; ``stage``: null on success, else where it failed:
  ``manifest`` (not a job: never run), ``settings``, ``load``, ``edit`` or ``write``;
- ``worker``: the process rank (0 when not sharded) or the ComfyUI server; ``time``: UTC ISO 8601;
- ``digest``: ``job_digest`` of the attempt (the run's fingerprint, the job's own settings, its
  input files' paths): a later run counts the attempt as this job's only while it matches.

A record is appended and flushed to disk before its output is renamed into place, so an output
never exists without its record; a killed run leaves at most a torn last line, which readers
skip. ``load_results`` merges every results*.jsonl file; the last attempt of a job wins.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import DestinationError, atomic_write_text
from .jobs import PATH_FIELDS, Job, job_settings

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
FINGERPRINT_NAME = "batch-run.json"
RECORD_KEYS = (
    "id",
    "line",
    "output",
    "seed",
    "settings",
    "seconds",
    "error",
    "stage",
    "worker",
    "time",
    "digest",
)
_HASHED_BYTES = 1 << 20


def output_path(out_dir: Path, job_id: str) -> Path:
    """Where job ``job_id``'s result goes: ``out_dir/<id>.png``."""
    return Path(out_dir) / f"{job_id}.png"


def results_name(rank: int | None = None) -> str:
    """The results file of process ``rank`` of a sharded run, or of an unsharded run (None)."""
    return RESULTS_NAME if rank is None else f"results.rank{rank}.jsonl"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def record(job_id: str | None, **values: object) -> dict[str, object]:
    """A results record with every key of ``RECORD_KEYS`` (the missing ones null)."""
    unknown = set(values) - set(RECORD_KEYS)
    if unknown:
        raise TypeError(f"not a results key: {', '.join(sorted(unknown))}")
    out: dict[str, object] = dict.fromkeys(RECORD_KEYS)
    out.update(values, id=job_id)
    out["time"] = out["time"] or now()
    return out


class ResultsLog:
    """Appends records to the out folder's results file, each flushed to disk at once."""

    def __init__(self, out_dir: Path, rank: int | None = None) -> None:
        self.path = Path(out_dir) / results_name(rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+b")  # noqa: SIM115 - kept open for the whole run
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell() > 0:
            self._handle.seek(-1, os.SEEK_END)
            if self._handle.read(1) != b"\n":  # a killed run's torn line: end it, never extend it
                self._handle.write(b"\n")

    def append(self, entry: Mapping[str, object]) -> None:
        self._handle.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(out_dir: Path) -> list[dict[str, object]]:
    """Every record of every results*.jsonl in ``out_dir``, oldest first (by ``time``). A line
    that is not a JSON object (the torn end of a killed run) is skipped with a warning."""
    found: list[tuple[str, str, int, dict[str, object]]] = []
    for path in sorted(Path(out_dir).glob("results*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or "id" not in entry:
                log.warning(
                    "%s line %d is not a results record (a killed run?): skipped", path, number
                )
                continue
            found.append((str(entry.get("time") or ""), path.name, number, entry))
    found.sort(key=lambda item: item[:3])
    return [entry for *_, entry in found]


def load_results(out_dir: Path) -> dict[str, dict[str, object]]:
    """Job id -> its last attempt's record, over every results*.jsonl of ``out_dir`` (manifest
    problems are not attempts and are left out)."""
    last: dict[str, dict[str, object]] = {}
    for entry in read_records(out_dir):
        if entry.get("stage") != "manifest" and isinstance(entry.get("id"), str):
            last[entry["id"]] = entry
    return last


def job_digest(fingerprint: RunFingerprint, job: Job) -> str:
    """sha256 (hex) of what defines a job's output: the run's fingerprint (model, defaults,
    runner), the job's own settings (read as their types, so that CSV's "7" and JSON's 7 agree)
    and its input files' paths."""
    try:
        checked = job_settings(job, {})
        own = {name: getattr(checked, name) for name in job.settings}
    except ValueError:  # a refused setting: the job fails; its digest keeps the values given
        own = dict(job.settings)
    paths = {name: getattr(job, name) for name in PATH_FIELDS}
    text = json.dumps(
        {
            "run": asdict(fingerprint),
            "settings": own,
            "inputs": {
                name: None if p is None else str(Path(p).absolute()) for name, p in paths.items()
            },
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan(
    jobs: Sequence[Job],
    done: Mapping[str, Mapping[str, object]],
    retry_failed: bool,
    overwrite: bool,
    out_dir: Path | None = None,
    digests: Mapping[str, str] | None = None,
) -> tuple[list[Job], list[Job]]:
    """-> (jobs to run, jobs skipped). Skipped: a job whose last attempt succeeded (unless
    ``overwrite``; with ``out_dir``, only while its output is still there) or failed (unless
    ``retry_failed`` or ``overwrite``). With ``digests`` (job id -> ``job_digest`` now), an
    attempt whose record has another digest (other settings, files or model) is not this job's:
    it is run again (and its output, made otherwise, is refused without ``overwrite``)."""
    todo: list[Job] = []
    skipped: list[Job] = []
    for job in jobs:
        last = done.get(job.id)
        if last is None or overwrite:
            todo.append(job)
        elif digests is not None and last.get("digest") != digests.get(job.id):
            todo.append(job)
        elif last.get("error") is not None:
            (todo if retry_failed else skipped).append(job)
        elif out_dir is not None and not (Path(out_dir) / str(last.get("output"))).is_file():
            todo.append(job)  # the output was removed since: made again
        else:
            skipped.append(job)
    return todo, skipped


def output_in_the_way(out_dir: Path, job_id: str, overwrite: bool) -> str | None:
    """Why job ``job_id``'s output cannot be written (it exists and not ``overwrite``), or None.
    Checked before a job runs: the output there is no finished attempt of this job as it is
    now, and is never replaced without --overwrite."""
    out = output_path(out_dir, job_id)
    if overwrite or not out.exists():
        return None
    return (
        f"{out.name} already exists in the --out folder and no finished attempt of this job with "
        f"its present settings and files made it; pass --overwrite to replace it"
    )


def checkpoint_identity(path: Path) -> dict[str, object]:
    """What identifies a model file without reading all of it: name, size, sha256 of its first
    MiB (of each file, for a folder)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        size = 0
        for file in files:
            size += file.stat().st_size
            digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(_HASHED_BYTES))
    else:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            digest.update(handle.read(_HASHED_BYTES))
    return {"name": path.name, "size": size, "sha256_first_mib": digest.hexdigest()}


@dataclass(frozen=True)
class RunFingerprint:
    """What defines a batch's outputs beyond each job's own settings: the model, the command
    line's defaults and the runner; kept in the out folder's ``batch-run.json``."""

    checkpoint: dict[str, object]
    defaults: dict[str, object]
    runner: str = "editor"  # "editor" or "headless"
    workflow: str | None = None  # the headless workflow's sha256
    extra: dict[str, object] = field(default_factory=dict)  # dtype, LoRAs, ...

    def flat(self) -> dict[str, object]:
        """Setting name -> value, nested dicts flattened (``checkpoint.size``, ``steps``)."""
        flat: dict[str, object] = {}
        for key, value in asdict(self).items():
            if key == "defaults":
                flat.update(value)
            elif isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    def differences(self, other: RunFingerprint) -> list[str]:
        """``name: X in the folder, Y now`` for each setting that differs from ``other`` (the
        folder's)."""
        mine, theirs = self.flat(), other.flat()
        return [
            f"{name}: {theirs.get(name)!r} in the folder, {mine.get(name)!r} now"
            for name in sorted(set(mine) | set(theirs))
            if mine.get(name) != theirs.get(name)
        ]

    def claim(self, out_dir: Path, overwrite: bool) -> None:
        """Write ``batch-run.json`` into ``out_dir``, or check the one there: a folder written
        by a run with other settings is refused (``DestinationError`` naming them) unless
        ``overwrite`` (then this run's settings replace them)."""
        path = Path(out_dir) / FINGERPRINT_NAME
        if path.is_file() and not overwrite:
            try:
                theirs = RunFingerprint(**json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise DestinationError(
                    f"{path} is not a batch run's record ({err}); use another --out folder"
                ) from None
            differ = self.differences(theirs)
            if not differ:
                return
            raise DestinationError(
                f"the --out folder {out_dir} holds the results of a run with other settings ("
                + "; ".join(differ)
                + "): use another --out folder, the same settings, or --overwrite to redo every "
                "job with these"
            )
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text)
