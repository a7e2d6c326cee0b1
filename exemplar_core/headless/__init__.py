"""Headless runner: run an API-format workflow on a running ComfyUI and download the results.

    python -m exemplar_core.headless workflows/api/basic_exemplar_edit.json \\
        --source photo.png --mask mask.png --exemplar object.png --out results/

It uploads the images (``POST /upload/image``) into the workflow's image loaders (found by their
``_meta.title``: "source", "mask", "exemplar", or any title with ``--image TITLE=PATH``), sets
inputs (``--set TITLE.INPUT=VALUE``, plus shortcuts ``--model``, ``--seed``, ``--steps``), queues
the prompt (``POST /prompt``), streams progress over the websocket (falls back to polling
``/history`` if the websocket is unavailable), downloads every output image (``/view``) and exits
non-zero with the server's error message when validation or execution fails.

Nothing of the user's is ever replaced: uploads go into the input folder's ``paint-by-example/``
subfolder under a name made from the file's content (so a user's own ``input/source.png`` is never
touched, and two runners whose inputs share a file name cannot swap images), without ComfyUI's
``overwrite``; a result whose name is already taken in ``--out`` is saved under a new name; a bad
``--out`` is refused before anything is uploaded or queued.

Mask convention: the mask file is a greyscale (or RGB) image, white = repaint. The templates load
it with ``LoadImageMask`` on the red channel, so no alpha-channel inversion is involved.

Only the Python standard library is used (no ComfyUI, no websocket package, no torch). One
module per part: ``client`` (HTTP: upload, queue, interrupt, history, the server's messages),
``websocket`` (the event stream), ``workflow`` (find and set nodes' inputs), ``run`` (a whole
run and its downloads), ``cli`` (the command line), ``errors`` (exit codes), ``farm`` (a batch
manifest's jobs spread over several servers, ``--manifest``; it reads the manifest with
``exemplar_core.batch``, so it is imported only when used).
"""

from __future__ import annotations

from ..argtypes import positive_int, positive_seconds
from .cli import (
    DESCRIPTION,
    add_arguments,
    build_parser,
    main,
    options_from_args,
    parse_sets,
    run_args,
    server_url,
)
from .client import (
    CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    UPLOAD_SUBFOLDER,
    Client,
    describe_execution_error,
    describe_failure,
    describe_rejection,
    encode_multipart,
    read_input,
    upload_name,
    wait_history,
)
from .errors import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, HeadlessError, ServerUnreachable
from .run import (
    IMAGE_LOADERS,
    SAMPLERS,
    RunOptions,
    SavedImage,
    apply_options,
    download_outputs,
    prepare_out_dir,
    queue_and_wait,
    run,
    run_outputs,
    view_path,
    wait_websocket,
    write_new_file,
)
from .websocket import FINISHING_EVENTS, WebSocket, ends_prompt, open_websocket, prompt_events
from .workflow import find_node, load_workflow, parse_value, set_all, set_input

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_SERVER",
    "DESCRIPTION",
    "EXIT_OK",
    "EXIT_SERVER_ERROR",
    "EXIT_USAGE",
    "FINISHING_EVENTS",
    "IMAGE_LOADERS",
    "SAMPLERS",
    "UPLOAD_SUBFOLDER",
    "Client",
    "HeadlessError",
    "RunOptions",
    "SavedImage",
    "ServerUnreachable",
    "WebSocket",
    "add_arguments",
    "apply_options",
    "build_parser",
    "describe_execution_error",
    "describe_failure",
    "describe_rejection",
    "download_outputs",
    "encode_multipart",
    "ends_prompt",
    "find_node",
    "load_workflow",
    "main",
    "open_websocket",
    "options_from_args",
    "parse_sets",
    "parse_value",
    "positive_int",
    "positive_seconds",
    "prepare_out_dir",
    "prompt_events",
    "queue_and_wait",
    "read_input",
    "run",
    "run_args",
    "run_outputs",
    "server_url",
    "set_all",
    "set_input",
    "upload_name",
    "view_path",
    "wait_history",
    "wait_websocket",
    "write_new_file",
]
