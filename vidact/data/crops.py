"""The test-crop setting ("1", "3", "10" or "random:K"), parsed once into `Crops`.

This module imports nothing heavy, so the recipe schema validates `eval.crops` with the
same parser the evaluator's views use (vidact.data.views explains each kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CropKind = Literal["centre", "three", "ten", "random"]
_FIXED: dict[str, CropKind] = {"1": "centre", "3": "three", "10": "ten"}
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class Crops:
    """The spatial crops of a test clip: their kind and how many there are."""

    kind: CropKind
    count: int

    @classmethod
    def parse(cls, text: str | int) -> Crops:
        """ "1" | "3" | "10" | "random:K" (K >= 1) -> Crops; ValueError otherwise."""
        text = str(text)
        if text in _FIXED:
            return cls(_FIXED[text], int(text))
        count = text.removeprefix(RANDOM_PREFIX)
        if text.startswith(RANDOM_PREFIX) and count.isdigit() and int(count) >= 1:
            return cls("random", int(count))
        raise ValueError("crops must be 1, 3, 10 or random:K (K >= 1)")

    def __str__(self) -> str:
        """The setting as written in a recipe or on the command line."""
        return f"{RANDOM_PREFIX}{self.count}" if self.kind == "random" else str(self.count)

    def describe(self) -> str:
        """ "1 crop", "3 crops", "25 random crops"."""
        random = " random" if self.kind == "random" else ""
        return f"{self.count}{random} crop{'s' * (self.count != 1 or self.kind == 'random')}"


CENTRE_CROP = Crops("centre", 1)  # the validation view
