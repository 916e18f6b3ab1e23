"""The model registry's public API (see ``vidact.models.registry`` for the one form).

- ``build_model(name, num_classes, **options)``: the registered model, options checked.
- ``list_models()``: the names, sorted.
- ``model_options(name)``: the options a model takes, with their defaults.
- ``check_model_options(name, options)``: raise ``ModelOptionError`` (with ``.key``) for an
  unknown model, an option it does not take (did-you-mean) or a value it cannot use.
- ``register_model(name, **bound)``: the decorator every model module uses.

Every video model takes float input (N, C, T, H, W) and returns (N, num_classes) logits.
The model modules are imported at the bottom so that their names exist once
``vidact.models`` is imported.
"""

from __future__ import annotations

# Model families register their names on import.
from vidact.models import (  # noqa: F401
    baselines,
    ctnet,
    released_repflow,
    rep_flow_nets,
    small_cnn,
)
from vidact.models.registry import (
    ModelOptionError,
    build_model,
    check_model_options,
    list_models,
    model_options,
    register_model,
)

__all__ = [
    "ModelOptionError",
    "build_model",
    "check_model_options",
    "list_models",
    "model_options",
    "register_model",
]
