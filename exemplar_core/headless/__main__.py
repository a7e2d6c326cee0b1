"""``python -m exemplar_core.headless``: the same as ``python -m exemplar_core headless``."""

import sys

from .cli import main

sys.exit(main())
