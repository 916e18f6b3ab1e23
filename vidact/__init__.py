"""vidact: video action recognition with Representation Flow and CT-Net."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "predict"]


def __getattr__(name: str) -> Any:
    """`vidact.predict` (vidact.engine.predict.predict), imported on first use so that
    `import vidact` stays light (no torch)."""
    if name == "predict":
        from vidact.engine.predict import predict

        return predict
    raise AttributeError(f"module 'vidact' has no attribute {name!r}")
