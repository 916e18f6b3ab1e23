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


# pydantic puts these before the message of a validator that raised ValueError / assert.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def pydantic_reason(message: str) -> str:
    """One pydantic error message as a user should read it: without the "Value error, "
    prefix that pydantic adds to a validator's own words (recipes, evaluate's settings,
    model options and the CLI's typed options all validate with pydantic)."""
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message
