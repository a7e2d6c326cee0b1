"""Reading checkpoint files without running code from them and without exhausting memory.

``.safetensors``: the header's claimed size is checked before it is read. Pickled files (``.ckpt``,
``.pt``, ``.bin``): ``torch.load(weights_only=True)`` after a scan that refuses a zip bomb or a
legacy file declaring more tensor bytes than it holds; Lightning's pickled training metadata is
replaced by harmless stubs, any other pickled global is refused with its name.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .container import CheckpointError, StateDict, Tensor

log = logging.getLogger(__name__)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# safetensors' own limit; the header of the official model (about 1,200 tensors) is ~150 KB.
MAX_SAFETENSORS_HEADER = 100_000_000


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file, its claimed size checked before it is read.

    A header size larger than the file (a text file's first bytes read as a number, a hostile
    file claiming gigabytes) is refused without allocating it.
    """
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"it has only {file_size} bytes")
            size = int.from_bytes(prefix, "little")
            if size <= 1 or size > MAX_SAFETENSORS_HEADER or size > file_size - 8:
                raise ValueError(
                    f"its first 8 bytes claim a {size:,}-byte header, but the file has "
                    f"{file_size:,} bytes and a header may have at most "
                    f"{MAX_SAFETENSORS_HEADER:,}"
                )
            header = json.loads(f.read(size))
    except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeError are ValueErrors
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated, corrupt or another kind of "
            f"file?): {err}. Download or convert it again."
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the .safetensors header is not a JSON object")
    return header


def read_safetensors(
    path: Path, lazy: bool, header: Mapping[str, Any] | None = None
) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file; ``lazy``: meta tensors from the header.

    ``header``: the file's header as ``safetensors_header`` already read it (when detecting the
    format); without it the header is checked here.
    """
    from safetensors import safe_open

    if header is None:
        safetensors_header(path)  # refuses a hostile header size before safetensors allocates it
    try:
        tensors: StateDict = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                if lazy:
                    info = f.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(info.get_dtype(), torch.float32)
                    tensors[key] = torch.empty(info.get_shape(), dtype=dtype, device="meta")
                else:
                    tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for bad headers / sizes
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated or corrupt?): {err}. "
            f"Download or convert it again."
        ) from err
    return tensors, metadata


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals a pickled checkpoint refers to, found without running anything."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # only for the error message: older formats cannot be scanned
        return []


# Globals that training frameworks pickle next to the weights (Lightning callbacks and hyper-
# parameters, numpy scalars in their state). They carry no weights; each is replaced by a harmless
# stub of ours while unpickling, so nothing from the file (or from those libraries) ever runs.
METADATA_GLOBAL_PREFIXES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "numpy.core.multiarray.",
    "numpy._core.multiarray.",
    "numpy.dtypes.",
    "omegaconf.",
)
METADATA_GLOBALS = frozenset(
    {"numpy.dtype", "numpy.ndarray", "_codecs.encode", "argparse.Namespace"}
)


class IgnoredPickleObject:
    """Stands in for a pickled object or function we do not load (see METADATA_GLOBALS)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> IgnoredPickleObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass  # the state is discarded


def _is_metadata_global(name: str) -> bool:
    return name in METADATA_GLOBALS or name.startswith(METADATA_GLOBAL_PREFIXES)


# Limits that keep a hostile or broken pickled checkpoint from exhausting memory. torch stores
# weights uncompressed and memory-maps them; only the pickle (names and structure, under 1 MB for
# the official model) is read into memory, and compressed entries are inflated into memory whole.
MAX_PICKLE_RECORD = 64 * 2**20
MAX_COMPRESSED_TOTAL = 64 * 2**20
# The storage classes a legacy (pre-zip) torch file names, by their element type; sizes come from
# the dtype (torch's own name table is private and could go in any release).
_LEGACY_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_LEGACY_ELEMENT_SIZES = {name: dtype.itemsize for name, dtype in _LEGACY_STORAGE_DTYPES.items()}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _refuse_oversized(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} was not loaded: {what}. A checkpoint saved by torch never does this; the file is "
        f"corrupt or was made to exhaust memory. Use the .safetensors version of the model."
    )


def _unreadable_ckpt(path: Path, detail: str) -> CheckpointError:
    """The one message for a pickled checkpoint that cannot be read; ``detail`` says why."""
    return CheckpointError(
        f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): {detail}. "
        f"Download it again or use the .safetensors version."
    )


def _check_zip_checkpoint(path: Path) -> None:
    """Refuse a zip checkpoint whose entries claim more than the file holds (a zip bomb)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise _unreadable_ckpt(path, str(err)) from err
    with archive:
        records = {entry.filename: entry for entry in archive.infolist()}
        _check_zip_entries(path, list(records.values()))
        pickles = [name for name in records if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            return  # not a torch checkpoint: torch.load refuses it with its own message
        prefix = pickles[0].removesuffix("data.pkl")
        try:
            with archive.open(pickles[0]) as data:
                scan = _StorageScan(data)
                scan.load()
        except Exception as err:  # noqa: BLE001 - any failure of the scan means a broken file
            raise _unreadable_ckpt(path, f"{type(err).__name__}: {err}") from err
    for key, declared in scan.declared.items():
        entry = records.get(f"{prefix}data/{key}")
        stored = entry.file_size if entry is not None else 0
        if declared > stored:
            raise _refuse_oversized(
                path, f"tensor storage {key} declares {declared:,} bytes but stores {stored:,}"
            )


def _check_zip_entries(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse an oversized pickle, a stored entry larger than the file, or a zip bomb."""
    file_size = path.stat().st_size
    compressed = 0
    for entry in entries:
        if entry.filename.endswith(".pkl") and entry.file_size > MAX_PICKLE_RECORD:
            raise _refuse_oversized(
                path, f"its pickle {entry.filename} claims {entry.file_size:,} bytes"
            )
        if entry.compress_type == zipfile.ZIP_STORED:
            if entry.file_size > file_size:
                raise _refuse_oversized(
                    path,
                    f"the entry {entry.filename} claims {entry.file_size:,} bytes in a file of "
                    f"{file_size:,}",
                )
        else:
            compressed += entry.file_size
            if compressed > MAX_COMPRESSED_TOTAL:
                raise _refuse_oversized(
                    path,
                    f"its compressed entries expand to more than {MAX_COMPRESSED_TOTAL:,} bytes "
                    f"({entry.filename} alone to {entry.file_size:,} from "
                    f"{entry.compress_size:,}): a zip bomb",
                )


class _ScanStub(IgnoredPickleObject):
    """Stands in for any pickled class during a scan, containers (OrderedDict, list) included."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle.Unpickler):
    """Reads a torch pickle only to collect the tensor bytes it declares, per storage key.

    Nothing from the file runs: every global becomes a stub. torch allocates a legacy file's
    storages at their declared size before reading them, and maps a zip's storages over their
    records, so the declared sizes are checked against what the file stores first.
    """

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.declared: dict[Any, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        size = _LEGACY_ELEMENT_SIZES.get(name, 8) if module == "torch" else 8
        return type(name, (_ScanStub,), {"element_size": size})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, root_key, _, numel = pid[1:5]
            if isinstance(numel, int):
                size = getattr(storage_type, "element_size", 8)
                self.declared[root_key] = max(self.declared.get(root_key, 0), numel * size)
        return IgnoredPickleObject()


class _BoundedReader:
    """A file whose reads never ask for more than what is left (a pickle's length fields lie)."""

    def __init__(self, file: Any, size: int) -> None:
        self.file, self.size = file, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.file.tell())
        return self.file.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.file.readline(max(0, self.size - self.file.tell()))


def _check_legacy_checkpoint(path: Path) -> None:
    """Refuse a legacy (pre-zip) torch file that declares more tensor bytes than it holds."""
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as raw:
            scan = _StorageScan(_BoundedReader(raw, file_size))
            if scan.load() != _LEGACY_MAGIC:
                return  # not a legacy torch file: torch.load refuses it with its own message
            for _ in range(3):  # protocol version, system info, the objects
                scan.load()
    except Exception as err:  # noqa: BLE001 - any failure of the scan means a broken file
        raise _unreadable_ckpt(path, f"{type(err).__name__}: {err}") from err
    declared = sum(scan.declared.values())
    if declared > file_size:
        raise _refuse_oversized(
            path, f"it declares {declared:,} bytes of tensors but holds only {file_size:,} bytes"
        )


def read_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``: refuses every pickled object that is not tensor data.

    A Lightning checkpoint also pickles callbacks, hyper-parameters and numpy scalars. Those known
    metadata globals are mapped to a stub (``IgnoredPickleObject``) that ignores its arguments, so
    the file loads with no code from it, or from Lightning or numpy, being run. Any other global
    is refused with its name.
    """
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_checkpoint(path)
    else:
        _check_legacy_checkpoint(path)
    found: list[str] | None = None  # the file's globals, once scanned
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            found = _unsafe_globals(path)
            if not found or not all(_is_metadata_global(name) for name in found):
                raise
            log.info("%s: ignoring pickled training metadata (%s)", path, ", ".join(found))
            stubs = [(IgnoredPickleObject, name) for name in found]
            with torch.serialization.safe_globals(stubs):
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        if found is None:
            found = _unsafe_globals(path)
        found = [name for name in found if not _is_metadata_global(name)]
        named = f" ({', '.join(found[:6])})" if found else ""
        raise CheckpointError(
            f"{path} contains pickled Python objects besides weights{named}; it was not loaded, "
            f"because loading them would run code from the file. Use the .safetensors version of "
            f"this checkpoint (or the diffusers folder), or convert it once with a tool you trust."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _unreadable_ckpt(path, detail) from err


def read_weights_file(path: Path, lazy: bool) -> StateDict:
    """The tensors of one weights file: ``.safetensors``, or a pickled dict of tensors."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, lazy)[0]
    obj = read_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
