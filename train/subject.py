"""Subject mode: DreamBooth-style class-prior preservation on the exemplar model.

Before training, the *frozen* start model edits N source/mask pairs (built from the scenes with
the same recipe as training pairs) with class exemplars (a folder, or crops of the class from a
box dataset). Those generations are the prior samples: training on them with the class exemplar
as reference keeps the model's generic behaviour for the class while the subject photos teach
the identity. Samples are written under ``prior_dir`` and reused by later runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from exemplar_core.editor import Editor, EditSettings
from exemplar_core.image_io import save_image, to_uint8
from exemplar_core.model import PaintByExampleModel
from exemplar_core.preprocess import normalize

from .augment import PairSpec, augment_reference, crop_reference
from .dataset import PairDataset, SkipSample, example_seed, load_image, pixel_box
from .readers import DatasetError, ImageRecord

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MANIFEST = "prior.jsonl"


class ExemplarSource:
    """Class exemplar images (0..1 tensors), from a folder or from boxes of a dataset."""

    def __init__(self, folder: str = "", records: list[ImageRecord] | None = None, pad: int = 10):
        self.files: list[Path] = []
        self.boxes: list[tuple[ImageRecord, int]] = []
        self.pad = pad
        if folder:
            root = Path(folder)
            if not root.is_dir():
                raise DatasetError(f"subject.class_exemplars {root} is not a folder")
            self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for record in records or []:
            self.boxes += [(record, i) for i in range(len(record.boxes))]
        if not self.files and not self.boxes:
            raise DatasetError(
                f"no class exemplar found (folder {folder or '-'}, "
                f"{len(records or [])} dataset images): add images or fix subject.class_names"
            )

    def __len__(self) -> int:
        return len(self.files) + len(self.boxes)

    def get(self, index: int) -> torch.Tensor:
        """[3, h, w] 0..1; raises SkipSample when unreadable."""
        if index < len(self.files):
            record = ImageRecord(self.files[index], [(0, 0, 1, 1)], 1, 1)
            return load_image(record)
        record, box_index = self.boxes[index - len(self.files)]
        image = load_image(record)
        _, height, width = image.shape
        box = pixel_box(record, record.boxes[box_index], width, height)
        return crop_reference(image, box, self.pad)


def _save_png(image: torch.Tensor, path: Path) -> None:
    """image: [C, H, W] 0..1 (C = 1 or 3). Written atomically, so a sample the manifest lists is
    complete; a sample regenerated on resume replaces what an interrupted run left."""
    array = to_uint8(image)
    pixels = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    save_image(pixels, path, "PNG", overwrite=True)


def read_manifest(prior_dir: Path) -> list[dict]:
    """Complete prior samples in ``prior_dir`` (every rank's manifest), ordered by index."""
    entries: dict[int, dict] = {}
    for manifest in sorted(prior_dir.glob("prior*.jsonl")):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[int(entry["index"])] = entry
    return [
        entries[i]
        for i in sorted(entries)
        if all((prior_dir / entries[i][k]).is_file() for k in ("image", "mask", "exemplar"))
    ]


@torch.no_grad()
def generate_prior(
    model: PaintByExampleModel,
    scenes: list[ImageRecord],
    exemplars: ExemplarSource,
    count: int,
    spec: PairSpec,
    prior_dir: Path,
    seed: int,
    steps: int,
    similarity: float,
    scheduler: str,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    existing: list[dict] | None = None,
) -> None:
    """Generate this rank's share of the missing prior samples with the frozen ``model``.

    Ranks take the sample indices congruent to their rank, so N processes generate in parallel;
    each appends to its own manifest. Samples already in ``prior_dir`` are reused. Leaves
    ``model`` in eval mode with gradients off (the caller re-enables training). With several
    ranks, pass ``existing`` read by every rank *before* any starts writing.
    """
    prior_dir.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(prior_dir) if existing is None else existing
    missing = count - len(entries)
    if missing <= 0:
        return
    share = missing // world_size + (1 if rank < missing % world_size else 0)
    from tqdm.auto import tqdm

    editor = Editor(model, device=device, dtype=torch.float32, progress=False)
    scene_pairs = PairDataset(scenes, spec, seed, salt="prior-scene")
    done = {int(e["index"]) for e in entries}
    manifest = prior_dir / (MANIFEST if world_size == 1 else f"prior-rank{rank}.jsonl")
    bar = tqdm(total=share, desc="prior samples", disable=not progress or share == 0)
    made, failures, index = 0, 0, rank
    while made < share:
        if failures > 20 * share + 100:
            raise DatasetError("could not build prior samples: scenes or exemplars are unreadable")
        if index in done:
            index += world_size
            continue
        rng = random.Random(example_seed(seed, 0, index, "prior"))
        # Scene i and i + len(scenes) get different masks and crops (a different "epoch").
        epoch, scene = divmod(index, len(scenes))
        try:
            item = scene_pairs.make(epoch, scene)
            exemplar = exemplars.get(rng.randrange(len(exemplars)))
        except SkipSample:
            failures += 1
            index += world_size
            continue
        source = ((item["image"] + 1) / 2).clamp(0, 1)[None]
        edit_mask = ((1 - item["keep_mask"]) >= 0.5).float()[None]
        settings = EditSettings(
            steps=steps,
            similarity=similarity,
            seed=seed + index,
            scheduler=scheduler,
            size=spec.resolution,
            whole_image=True,
            paste_back=False,
        )
        result = editor.edit(source, edit_mask, exemplar[None], settings).image[0].cpu()
        names = {k: f"{index:05d}-{k}.png" for k in ("image", "mask", "exemplar")}
        _save_png(result, prior_dir / names["image"])
        _save_png(edit_mask[0], prior_dir / names["mask"])
        _save_png(exemplar, prior_dir / names["exemplar"])
        with manifest.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"index": index, **names}) + "\n")
        made += 1
        bar.update(1)
        index += world_size
    bar.close()


class PriorDataset(Dataset):
    """Prior samples as training pairs: the generation is the target, the class exemplar (freshly
    augmented each epoch) the reference, the same edit mask."""

    def __init__(self, prior_dir: Path, entries: list[dict], spec: PairSpec, seed: int) -> None:
        if not entries:
            raise DatasetError(f"no prior samples in {prior_dir}")
        self.dir, self.entries, self.spec, self.seed = prior_dir, entries, spec, seed

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, name: str, mode: str) -> torch.Tensor:
        with Image.open(self.dir / name) as image:
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.copy())
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        entry = self.entries[index]
        rng = random.Random(example_seed(self.seed, epoch, index, "prior-train"))
        size = [self.spec.resolution] * 2
        image = (
            torch.nn.functional.interpolate(
                self._read(entry["image"], "RGB")[None], size=size, mode="bilinear"
            )[0]
            * 2
            - 1
        )
        edit = torch.nn.functional.interpolate(
            self._read(entry["mask"], "L")[None], size=size, mode="bilinear"
        )[0]
        keep = 1 - edit
        exemplar = self._read(entry["exemplar"], "RGB")
        reference = augment_reference(exemplar, rng, self.spec.reference, self.spec.reference_size)
        return {
            "image": image,
            "keep_mask": keep,
            "masked_image": image * keep,
            "reference": normalize(reference, self.spec.clip_mean, self.spec.clip_std),
            "skipped": 0,
        }
