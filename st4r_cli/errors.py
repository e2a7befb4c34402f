"""User-facing errors.

Anything a user can cause (bad path, bad option value, corrupt video, missing weights) raises
`St4rError` with a one-line message. The CLI prints that line and exits non-zero; it never shows
a traceback for these.
"""


class St4rError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
