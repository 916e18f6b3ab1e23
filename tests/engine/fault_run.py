"""`python -m tests.engine.fault_run ARGS...`: the `vidact` CLI with the tiny test model
registered, for fault tests that run training in a subprocess (signals, kill points).

VIDACT_TEST_ITEM_DELAY=seconds makes every training clip that long to load (in the
DataLoader workers too), so a test can signal the run in the middle of an epoch.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from vidact.cli import main
from vidact.data.dataset import ClipDataset

_DELAY = float(os.environ.get("VIDACT_TEST_ITEM_DELAY", "0"))
if _DELAY > 0:
    _real = ClipDataset.__getitem__

    def _slow(self: ClipDataset, key: Any) -> Any:
        time.sleep(_DELAY)
        return _real(self, key)

    ClipDataset.__getitem__ = _slow  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
