"""The COCOEE test bench (the paper's benchmark) as batch jobs, and its results laid out to score.

The official release (Fantasy-Studio/Paint-by-Example, ``ldm/data/test_bench_dataset.py``) reads::

    test_bench/
      id_list.npy                          the 3,500 COCO image ids (int64; in the code repository)
      GT_3500/{id:012d}_GT.png             source image, 512 x 512
      Ref_3500/{id:012d}_ref.png           exemplar (reference patch)
      Mask_bbox_3500/{id:012d}_mask.png    edit mask: white (255) = the box to repaint

``cocoee_jobs`` turns that folder into one job per id (job id = the 12-digit id, so the output is
``OUT/{id}.png`` as the official ``results/{id}.png``). ``write_eval_layout`` links the exemplars
and masks into ``OUT/exemplars`` and ``OUT/masks`` under the names ``python -m train.eval folder``
expects, so ``train.eval folder --results OUT`` scores the run with no renaming.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..files import DestinationError, atomic_write
from .jobs import Job, check_job_id

log = logging.getLogger(__name__)

GT_FOLDER, REF_FOLDER, MASK_FOLDER = "GT_3500", "Ref_3500", "Mask_bbox_3500"
GT_SUFFIX, REF_SUFFIX, MASK_SUFFIX = "_GT.png", "_ref.png", "_mask.png"
ID_LIST = "id_list.npy"
ID_DIGITS = 12  # str(coco_id).zfill(12), as the official dataset names its files
EXEMPLARS_FOLDER, MASKS_FOLDER = "exemplars", "masks"  # train.eval folder's defaults under OUT

# The official test-bench inference (inference_test_bench.sh: --plms, 50 steps, --scale 5,
# seed_everything(42)) processes the whole 512 x 512 image and keeps the decoded image as it is
# (no paste back). The batch command uses these as its defaults under --cocoee; options given
# on the command line still win. The processing size is left to the model (512 for the
# published one). One seed for every id: the official script draws all noise from one stream
# seeded once, which no per-image seed can reproduce; a fixed seed per id keeps each result
# independent of batching and sharding.
COCOEE_SETTINGS: dict[str, object] = {
    "steps": 50,
    "similarity": 5.0,
    "scheduler": "pndm",
    "seed": 42,
    "whole_image": True,
    "paste_back": False,
}


def cocoee_defaults(defaults: Mapping[str, object]) -> dict[str, object]:
    """The command line's settings (field names) with ``COCOEE_SETTINGS`` wherever an option
    was left at the editor's default: ``--steps 20`` stays 20, an untouched ``--seed`` is 42."""
    from ..editor import EditSettings

    editor_defaults = EditSettings()
    settings = dict(defaults)
    for name, official in COCOEE_SETTINGS.items():
        if settings.get(name, getattr(editor_defaults, name)) == getattr(editor_defaults, name):
            settings[name] = official
    return settings


_FOLDERS = (  # (folder, file-name suffix, the job field it fills)
    (GT_FOLDER, GT_SUFFIX, "source"),
    (REF_FOLDER, REF_SUFFIX, "exemplar"),
    (MASK_FOLDER, MASK_SUFFIX, "mask"),
)


class CocoeeLayoutError(ValueError):
    """A folder that is not the COCOEE test bench; the message says what was expected."""


@dataclass
class CocoeeBench:
    """What a COCOEE folder holds: every id, and the files each id lacks (``{id: [paths]}``)."""

    folder: Path
    ids: list[str]
    missing: dict[str, list[Path]] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)  # names that cannot be a job id, skipped

    def problems(self) -> list[str]:
        """One line per id that lacks a file (naming the missing paths) or cannot be an id."""
        lines = [
            f"COCOEE id {key}: missing {', '.join(str(p) for p in paths)}"
            for key, paths in sorted(self.missing.items())
        ]
        return lines + [
            f"COCOEE file name {name!r} skipped: {check_job_id(name)}" for name in self.stray
        ]


def _paths(folder: Path, key: str) -> dict[str, Path]:
    return {what: folder / sub / f"{key}{suffix}" for sub, suffix, what in _FOLDERS}


def _ids_in(folder: Path, suffix: str) -> set[str]:
    return {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if len(p.name) > len(suffix)}


def _read_id_list(path: Path) -> list[str]:
    import numpy as np

    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CocoeeLayoutError(
            f"{path} is not the COCOEE id list (a NumPy array of integer COCO ids): {err}"
        ) from err
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise CocoeeLayoutError(
            f"{path} holds a {ids.dtype} array of shape {tuple(ids.shape)}; the COCOEE id list "
            f"is a 1-D array of integer COCO ids"
        )
    return [str(int(i)).zfill(ID_DIGITS) for i in ids]


def scan(folder: str | os.PathLike[str]) -> CocoeeBench:
    """Read a COCOEE folder's layout: the ids from ``id_list.npy`` when present (the official
    order), else from the file names in the three folders. An id lacking a file is listed in
    ``missing``, not dropped: the batch records it as a failed job and goes on with the others.

    Raises ``CocoeeLayoutError`` for a folder that is not the test bench (a sub-folder missing,
    no image in it), naming what was expected and what was found."""
    root = Path(folder)
    if not root.is_dir():
        raise CocoeeLayoutError(f"--cocoee {root} is not a folder; give the unpacked test bench")
    absent = [sub for sub, _, _ in _FOLDERS if not (root / sub).is_dir()]
    if absent:
        found = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        hint = ""
        if (root / "test_bench" / GT_FOLDER).is_dir():
            hint = f"; the test bench looks to be in {root / 'test_bench'}: give that folder"
        raise CocoeeLayoutError(
            f"{root} is not the COCOEE test bench: expected the folders {GT_FOLDER}, "
            f"{REF_FOLDER} and {MASK_FOLDER}, missing {', '.join(absent)}; found "
            f"{', '.join(found[:10]) or 'nothing'}{' ...' if len(found) > 10 else ''}{hint}"
        )
    id_list = root / ID_LIST
    if id_list.is_file():
        ids = _read_id_list(id_list)
    else:
        ids = sorted(set().union(*(_ids_in(root / sub, suffix) for sub, suffix, _ in _FOLDERS)))
    if not ids:
        raise CocoeeLayoutError(
            f"{root / GT_FOLDER} holds no '*{GT_SUFFIX}' image (and there is no {ID_LIST}); "
            f"COCOEE names its sources {{id}}{GT_SUFFIX}, e.g. 000000000139{GT_SUFFIX}"
        )
    if len(set(ids)) < len(ids):
        twice = sorted({key for key in ids if ids.count(key) > 1})
        raise CocoeeLayoutError(f"{id_list} lists these ids more than once: {twice[:10]}")
    bench = CocoeeBench(root, [key for key in ids if check_job_id(key) is None])
    bench.stray = sorted(set(ids) - set(bench.ids))
    for key in ids:
        lacking = [path for path in _paths(root, key).values() if not path.is_file()]
        if lacking:
            bench.missing[key] = lacking
    return bench


def cocoee_jobs(folder: str | os.PathLike[str]) -> list[Job]:
    """One job per COCOEE id (source = ``GT_3500``, exemplar = ``Ref_3500``, mask =
    ``Mask_bbox_3500``), in the id list's order, with no settings of its own (the command line's,
    ``COCOEE_SETTINGS`` under ``--cocoee``, apply). An id lacking a file still gets its job: it
    fails on the missing file and is recorded in the results with that message; each such id
    is also logged as a warning."""
    bench = scan(folder)
    for line in bench.problems():
        log.warning("%s", line)
    jobs = []
    for key in bench.ids:
        paths = _paths(bench.folder, key)
        jobs.append(
            Job(
                id=key,
                source=paths["source"],
                mask=paths["mask"],
                exemplar=paths["exemplar"],
                exemplar_mask=None,
                settings={},
            )
        )
    return jobs


def _place(source: Path, target: Path, overwrite: bool) -> bool:
    """Hard-link (else copy) ``source`` to ``target``; True when something was written. A target
    that already holds the same bytes is left alone; one that differs is refused."""
    if target.exists():
        if target.read_bytes() == source.read_bytes():
            return False
        if not overwrite:
            raise CocoeeLayoutError(
                f"{target} exists and differs from {source}; pass --overwrite to replace it, or "
                f"choose another --out"
            )
        target.unlink(missing_ok=True)  # another rank may have removed it already
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:  # another process (an accelerate rank) placed it meanwhile
        return _place(source, target, overwrite=False)
    except OSError:  # another file system, or links not allowed: copy
        try:
            atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), overwrite=False)
        except DestinationError:
            if not target.exists():
                raise
            return _place(source, target, overwrite=False)  # placed meanwhile by another rank
    return True


def write_eval_layout(
    folder: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> int:
    """Link each id's exemplar and mask into ``out_dir/exemplars/{id}_ref.png`` and
    ``out_dir/masks/{id}_mask.png`` (the defaults of ``python -m train.eval folder --results
    out_dir``), next to the batch's ``out_dir/{id}.png``. Ids lacking a file are skipped (their
    job fails too). Idempotent; returns the number of files written."""
    bench = scan(folder)
    out = Path(out_dir)
    written = 0
    for key in bench.ids:
        if key in bench.missing:
            continue
        paths = _paths(bench.folder, key)
        for source, target in (
            (paths["exemplar"], out / EXEMPLARS_FOLDER / f"{key}{REF_SUFFIX}"),
            (paths["mask"], out / MASKS_FOLDER / f"{key}{MASK_SUFFIX}"),
        ):
            written += _place(source, target, overwrite)
    return written
