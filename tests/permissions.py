"""Subprocesses that respect file permission bits even when the tests run as root (CI containers).

Root ignores permission bits through CAP_DAC_OVERRIDE. Dropping it from the capability bounding
set before exec leaves the child root but bound by permissions, as any user is, so a read-only
folder is read-only for it too. Linux only; a failed drop raises, it never silently skips.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1


def _drop_dac_override() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def bound_by_permissions() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.run``: drops root's override; ``None`` for other users."""
    return _drop_dac_override if hasattr(os, "geteuid") and os.geteuid() == 0 else None
