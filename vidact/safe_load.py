"""Read a torch file without running its code: the one `torch.load` of the package.

A checkpoint is a pickle, and a pickle can call any function while it loads (a shared
file that calls `os.system` runs that command as the user). Every file vidact reads goes
through `load_tensors_file`, which loads with `torch.load(weights_only=True)`: tensors,
numbers, strings, lists, tuples and dicts only. Numeric numpy arrays are allowed as well
(vidact checkpoints written before the format stored its numpy RNG state as a list hold
one); an object array, a class or a function is refused with one line naming what the
file asked for. There is no fallback to unsafe loading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidact.errors import VidactError

# numpy's array-unpickling function, found through the public pickle protocol: its module
# is numpy._core.multiarray on numpy 2 and numpy.core.multiarray on numpy 1.
_reconstruct: Callable[..., Any] = np.zeros(0).__reduce__()[0]  # type: ignore[assignment]

# Exactly what an older vidact checkpoint needs beyond plain data: its numpy RNG state, a
# uint32 array (the allowlist of torch's documentation for numeric arrays).
_NUMPY_ARRAYS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    _reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
]


def _unsafe_globals(path: Path) -> list[str]:
    """The globals (classes, functions) the file's pickle names; read without running any."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: the load error below says so
        return []


def load_tensors_file(path: str | Path, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, or a VidactError of one line."""
    path = Path(path)
    if not path.is_file():
        raise VidactError(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_ARRAYS if callable(g)}
        needs = [name for name in _unsafe_globals(path) if name not in allowed]
        if needs:
            shown = ", ".join(needs[:3]) + (" ..." if len(needs) > 3 else "")
            raise VidactError(
                f"{path}: refused: loading this {what} would run code ({shown}); vidact loads "
                "only tensors, numbers, strings, lists and dicts (torch.load with "
                "weights_only=True). If you trust the file, re-save just its tensors"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise VidactError(
            f"{path}: not a readable {what} ({type(exc).__name__}: {first})"
        ) from None
