"""The one error class shown to users: a message saying what is wrong and a hint saying how to fix it."""

from __future__ import annotations


class MapdError(Exception):
    """A problem the user can fix. The CLI prints it in one or two lines and exits with 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
