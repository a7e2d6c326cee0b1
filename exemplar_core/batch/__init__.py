"""The batch editor: a manifest of edit jobs run with one model load, resumable, sharded across
processes (``python -m exemplar_core batch``; docs/batch.md).

``jobs``: the manifest and its jobs; ``results``: the out folder (results log, fingerprint,
outputs, what is left to do); ``run``: running the jobs; ``cli``: the command line.
"""

from .cli import DESCRIPTION, add_arguments, run_args

__all__ = ["DESCRIPTION", "add_arguments", "run_args"]
