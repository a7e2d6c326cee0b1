"""Batch manifests: one edit job per JSONL line or CSV row, read into ``Job``s and the
``JobProblem``s of the lines that cannot be jobs.

A job names ``source``, ``mask`` (white = edit), ``exemplar`` and optionally ``exemplar_mask``
(white = the object), each a path (relative paths resolve against the manifest's folder), an
``id`` (the output's file name; when omitted, ``line-NNNNNN`` from the line the job starts on),
and any ``EditSettings`` field (``seed``, ``steps``, ``similarity``, ...); the settings a job
leaves out come from the command line. Values are checked when the job runs
(``job_settings``): a bad value fails that job alone, with a message naming the setting.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from ..editor import EditSettingError, EditSettings

PATH_FIELDS = ("source", "mask", "exemplar", "exemplar_mask")
REQUIRED_FIELDS = ("source", "mask", "exemplar")
# Every EditSettings field but ``names`` (how messages call a setting, not a setting).
SETTING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EditSettings) if f.name != "names")
MANIFEST_FIELDS: tuple[str, ...] = ("id", *PATH_FIELDS, *SETTING_FIELDS)
ID_MAX = 128
_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_DEFAULTS = EditSettings()


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing, empty, unknown format, bad CSV header)."""


@dataclass(frozen=True)
class Job:
    """One edit: the files it reads and the settings it gives (EditSettings field names, values
    as the manifest wrote them: checked by ``job_settings``)."""

    id: str
    source: Path
    mask: Path
    exemplar: Path
    exemplar_mask: Path | None
    settings: dict[str, object]
    line: int = 0  # the manifest line the job starts on (1-based), for messages


@dataclass(frozen=True)
class JobProblem:
    """A manifest line that is no job: malformed, a duplicate id, an unknown setting, a missing
    field. ``job_id`` is the id it names, when it names one."""

    line: int
    job_id: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def default_id(line: int) -> str:
    """The id of a job that gives none: from the manifest line it starts on."""
    return f"line-{line:06d}"


def check_job_id(job_id: str) -> str | None:
    """Why ``job_id`` cannot be a file name, or None when it can."""
    if not job_id:
        return "the id is empty"
    if len(job_id) > ID_MAX:
        return f"the id is {len(job_id)} characters long; at most {ID_MAX} are allowed"
    if not _ID_PATTERN.fullmatch(job_id):
        return (
            f"the id {job_id!r} has characters other than letters, digits, '.', '_' and '-' "
            f"(it becomes the output's file name)"
        )
    if job_id.startswith("."):
        return f"the id {job_id!r} starts with a dot (it would be a hidden file)"
    return None


def read_manifest(path: Path, base: Path | None = None) -> tuple[list[Job], list[JobProblem]]:
    """A .jsonl or .csv manifest -> (its jobs in file order, the problems of the other lines).
    Relative paths resolve against ``base`` (default: the manifest's folder). Raises
    ``ManifestError`` for a manifest that is missing, empty, of another format or whose CSV
    header names an unknown column."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"the manifest {path} is a folder; give a .jsonl or .csv file")
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ManifestError(
            f"the manifest {path} ends in {path.suffix or 'no extension'!r}; expected .jsonl "
            f"(one JSON object per line) or .csv (a header row naming the fields)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"the manifest {path} is not UTF-8 text ({err})") from None
    rows = _jsonl_rows(text) if suffix == ".jsonl" else _csv_rows(text, path)
    base = Path(base) if base is not None else path.parent
    jobs: list[Job] = []
    problems: list[JobProblem] = []
    # by id.casefold(): "A" and "a" would write one A.png on a case-insensitive file system
    first_line: dict[str, tuple[int, str]] = {}
    any_row = False
    for line, row in rows:
        any_row = True
        if isinstance(row, JobProblem):
            problems.append(row)
            continue
        job = _job(line, row, base)
        if isinstance(job, JobProblem):
            problems.append(job)
        elif job.id.casefold() in first_line:
            first, first_id = first_line[job.id.casefold()]
            what = (
                f"duplicate id {job.id!r} (first on line {first})"
                if first_id == job.id
                else f"duplicate id {job.id!r}: it differs from {first_id!r} (line {first}) only "
                f"in letter case, and a file system that ignores case holds one file for both"
            )
            problems.append(
                JobProblem(
                    line,
                    job.id,
                    f"{what}; each job needs its own id, its output's file name; this line is "
                    f"not run",
                )
            )
        else:
            first_line[job.id.casefold()] = (line, job.id)
            jobs.append(job)
    if not any_row:
        raise ManifestError(f"the manifest {path} has no jobs")
    return jobs, problems


def _jsonl_rows(text: str):
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            yield (
                line,
                JobProblem(
                    line,
                    None,
                    f"not valid JSON ({err.msg} at column {err.colno}); each line must "
                    'be one JSON object such as {"source": ..., "mask": ..., "exemplar": ...}',
                ),
            )
            continue
        if not isinstance(row, dict):
            yield (
                line,
                JobProblem(
                    line,
                    None,
                    f"a JSON {type(row).__name__}, not an object; each line must be one "
                    'JSON object such as {"source": ..., "mask": ..., "exemplar": ...}',
                ),
            )
            continue
        yield line, row


def _csv_rows(text: str, path: Path):
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise ManifestError(f"the manifest {path}: its header row is malformed ({err})") from None
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in MANIFEST_FIELDS]
    if unknown:
        raise ManifestError(
            f"the manifest {path}: unknown column {_unknown(unknown[0])}; the columns are "
            f"{', '.join(MANIFEST_FIELDS)}"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ManifestError(f"the manifest {path}: the column {repeated[0]!r} appears twice")
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        raise ManifestError(
            f"the manifest {path}: its header has no {', '.join(missing)} column; every job "
            f"needs {', '.join(REQUIRED_FIELDS)}"
        )
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield line, JobProblem(line, None, f"malformed CSV row ({err})")
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield (
                line,
                JobProblem(
                    line,
                    None,
                    f"the row has {len(cells)} cells but the header names {len(header)} columns "
                    f"({', '.join(header)}); quote a cell that holds a comma",
                ),
            )
            continue
        # An empty cell gives nothing: the command line's default (or no exemplar mask).
        yield line, {name: cell for name, cell in zip(header, cells, strict=True) if cell != ""}


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, MANIFEST_FIELDS, n=1)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _job(line: int, row: Mapping[str, object], base: Path) -> Job | JobProblem:
    """One manifest row (JSON values, or CSV cells as strings) -> a Job, or its problem."""
    raw_id = row.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, type(None))):
        return JobProblem(line, None, f"the id must be a string, got {raw_id!r}")
    job_id = default_id(line) if raw_id is None else str(raw_id)
    shown = job_id if raw_id is not None else None
    why = check_job_id(job_id)
    if why is not None:
        return JobProblem(line, None, f"{why}; use only letters, digits, '.', '_' and '-'")
    unknown = [name for name in row if name not in MANIFEST_FIELDS]
    if unknown:
        return JobProblem(
            line,
            shown,
            f"unknown setting {_unknown(unknown[0])}; a job's fields are "
            f"{', '.join(MANIFEST_FIELDS)}",
        )
    missing = [name for name in REQUIRED_FIELDS if not row.get(name)]
    if missing:
        return JobProblem(
            line,
            shown,
            f"no {', '.join(missing)} given; every job needs {', '.join(REQUIRED_FIELDS)}",
        )
    paths: dict[str, Path | None] = {}
    for name in PATH_FIELDS:
        value = row.get(name)
        if value is None or value == "":
            paths[name] = None
        elif not isinstance(value, str):
            return JobProblem(line, shown, f"{name} must be a file path (a string), got {value!r}")
        else:
            paths[name] = base / Path(value).expanduser()
    settings = {name: row[name] for name in SETTING_FIELDS if name in row}
    return Job(job_id, **paths, settings=settings, line=line)  # type: ignore[arg-type]


def job_settings(
    job: Job, defaults: Mapping[str, object], default_names: Mapping[str, str] | None = None
) -> EditSettings:
    """The job's effective settings: its own over ``defaults`` (the command line's, field
    names). CSV cells are read as the field's type; checked by ``EditSettings``, whose message
    names the setting (``steps (manifest line 3)``, or the option for a command-line default).
    Raises ``EditSettingError``."""
    names = {
        name: (default_names or {}).get(name, "--" + name.replace("_", "-")) for name in defaults
    }
    values = dict(defaults)
    for name, value in job.settings.items():
        names[name] = f"{name} (manifest line {job.line})" if job.line else name
        values[name] = _typed(name, value, names[name])
    return EditSettings(**values, names=names)  # type: ignore[arg-type]


def _typed(name: str, value: object, shown: str) -> object:
    """A manifest value as the field's type: CSV gives strings; JSON numbers and booleans stay.
    What cannot be read is passed on for ``EditSettings`` to refuse with its message."""
    default = getattr(_DEFAULTS, name)
    kind = int if name == "size" else type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise EditSettingError(shown, f"must be true or false, got {value!r}")
    if kind is int and isinstance(value, float):  # JSON's 7.0: a whole number, as int
        if value.is_integer():
            return int(value)
        raise EditSettingError(shown, f"must be a whole number, got {value!r}")
    if not isinstance(value, str) or kind is str:
        return value
    text = value.strip()
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        return value
