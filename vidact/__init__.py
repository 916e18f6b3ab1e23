"""vidact: video action recognition with Representation Flow and CT-Net."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
