"""The exception types that mean "the user can fix this".

The CLI turns any `VidactError` into one red line and exit code 2 (a traceback only with
`--debug`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VidactError(Exception):
    """An error the user can act on: the message names the file/field and what to do."""


class RecipeError(VidactError):
    """A recipe file is missing, malformed, or does not match the schema."""


class VideoReadError(VidactError):
    """A video or frame folder could not be read. Carries the path and a human reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ManifestError(VidactError):
    """A manifest or label map is missing, malformed, or points at missing files."""
