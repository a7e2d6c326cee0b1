"""Subprocesses that respect file permission bits even when the tests run as root (CI containers).

Root ignores permission bits through CAP_DAC_OVERRIDE. Before exec the child drops it from the
capability bounding set and from its inheritable, permitted and effective sets (older Docker
releases put it in the inheritable set, which an exec as root would carry over), so it stays root
but bound by permissions, as any user is: a read-only folder is read-only for it too. Linux only;
a failed drop raises, it never silently skips.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAPABILITY_VERSION_3 = 0x20080522  # two 32-bit words per set; capability 1 is in the first


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args):
        raise OSError(ctypes.get_errno(), f"{name} failed")


def _drop_dac_override() -> None:
    _libc_call("prctl", _PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, 0, 0, 0)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _libc_call("capget", ctypes.byref(header), data)
    keep = ~(1 << _CAP_DAC_OVERRIDE) & 0xFFFFFFFF
    for name in ("effective", "permitted", "inheritable"):
        setattr(data[0], name, getattr(data[0], name) & keep)
    _libc_call("capset", ctypes.byref(header), data)


def bound_by_permissions() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.run``: drops root's override; ``None`` for other users."""
    return _drop_dac_override if hasattr(os, "geteuid") and os.geteuid() == 0 else None
