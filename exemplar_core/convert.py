"""Deprecated: use ``exemplar_core.checkpoint.cli`` (kept for a release so old imports and
``python -m exemplar_core.convert`` keep working). Every public name this module had, re-exported.
"""

import sys
import warnings

from .checkpoint.cli import (
    EXIT_BAD_INPUT,
    METADATA_PREVIEW,
    describe,
    main,
    register,
    run_convert,
    run_info,
)

warnings.warn(
    "exemplar_core.convert is deprecated and goes in the next release: "
    "use exemplar_core.checkpoint.cli",
    DeprecationWarning,
    stacklevel=2,
)


__all__ = [
    "EXIT_BAD_INPUT",
    "METADATA_PREVIEW",
    "describe",
    "main",
    "register",
    "run_convert",
    "run_info",
]

if __name__ == "__main__":
    sys.exit(main())
