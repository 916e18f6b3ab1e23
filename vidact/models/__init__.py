"""The model registry: `build_model(name, num_classes, **kwargs)` and `list_models()`.

Every video model takes float input (N, C, T, H, W) and returns (N, num_classes) logits.
Model families register their constructors with `@register_model("name")` in their own
module; the modules are imported at the bottom so that their names exist once
`vidact.models` is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from vidact.errors import VidactError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class/function decorator that adds a constructor to the registry under `name`."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with a `num_classes`-way classifier."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VidactError(
            f"unknown model {name!r}{hint}; `vidact models` or vidact.models.list_models() "
            "lists the names"
        )
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


# Model families register their names on import (bottom of the module: they import
# `register_model` from here).
from vidact.models import baselines, ctnet, rep_flow_nets, small_cnn  # noqa: E402, F401

__all__ = ["build_model", "list_models", "register_model"]
