"""The headless runner's exit codes and its one error class."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server refused or failed the workflow
EXIT_USAGE = 2  # bad arguments, unreadable files, no server


class HeadlessError(RuntimeError):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int = EXIT_SERVER_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ServerUnreachable(HeadlessError):
    """The server did not answer (refused, reset, timed out): the server's fault, not the
    workflow's; the farm retries the job on another server."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)
