"""The one model registry: every model is a decorated, named factory function.

The form (the same in every model module)::

    @register_model("repflow_resnet18", depth=18, arch="2d")
    @register_model("repflow_resnet34", depth=34, arch="2d")
    def repflow_resnet(
        depth: int,
        arch: str,
        *,
        num_classes: int,
        num_frames: int | None = None,
        dropout: float = 0.5,
        weights: str | os.PathLike[str] | None = None,
        flow: Literal["flow", "fof"] = "flow",
        flow_channels: Positive = 32,
    ) -> nn.Module: ...

- Parameters before ``*`` are fixed by the name: each registration binds all of them.
- Keyword-only parameters are the model's options (a recipe's ``model:`` keys). Every
  factory takes the four common ones, ``num_classes``, ``num_frames``, ``dropout`` and
  ``weights``, so callers pass them without asking; a registration may change the default
  of any option (``@register_model("repflow_fcf_resnet18", ..., flow="fcf")``).
- The option annotations are checked (by pydantic, without building the model) when a
  recipe loads and before a model is built: ``Positive`` for counts, ``Literal`` for
  choices. Names and values that do not fit are one ``ModelOptionError`` line.

The signature is read once here, at registration; nothing outside ``vidact.models`` needs
``inspect`` or the registry's internals.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from pydantic import Field
from torch import nn

from vidact.errors import VidactError, pydantic_reason

ModelFactory = Callable[..., nn.Module]
COMMON_OPTIONS = ("num_classes", "num_frames", "dropout", "weights")

Positive = Annotated[int, Field(ge=1)]  # a count: channels, iterations, classes
NonNegative = Annotated[int, Field(ge=0)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]


class ModelOptionError(VidactError):
    """A model option that the named model does not take, or a value it cannot use.
    ``key`` is the option's name (None for an unknown model name)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ModelEntry:
    """One registered name: the factory, the arguments the name fixes, the option defaults
    (after the registration's presets) and one validator per option."""

    name: str
    factory: ModelFactory
    fixed: Mapping[str, Any]
    defaults: Mapping[str, Any]
    validators: Mapping[str, pydantic.TypeAdapter[Any]]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, **bound: Any) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name``; ``bound`` gives every positional parameter of the
    factory (fixed by the name) and may preset option defaults. See the module docstring."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = _entry(name, factory, bound)
        return factory

    return decorator


def _entry(name: str, factory: ModelFactory, bound: Mapping[str, Any]) -> ModelEntry:
    if not inspect.isfunction(factory):
        raise TypeError(f"register_model({name!r}) decorates a factory function, not {factory!r}")
    params = inspect.signature(factory).parameters.values()
    hints = typing.get_type_hints(factory, include_extras=True)
    fixed_names = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    options = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    missing = [o for o in COMMON_OPTIONS if o not in options]
    if missing or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise TypeError(
            f"model factory {factory.__qualname__} must take the keyword-only options "
            f"{COMMON_OPTIONS} (missing {missing}) and no **kwargs"
        )
    if sorted(set(bound) & set(fixed_names)) != sorted(fixed_names):
        raise TypeError(f"register_model({name!r}) must bind {fixed_names}, got {sorted(bound)}")
    unknown = set(bound) - set(fixed_names) - set(options)
    if unknown:
        raise TypeError(f"register_model({name!r}): {sorted(unknown)} are not parameters")
    defaults = {o: bound.get(o, p.default) for o, p in options.items() if o != "num_classes"}
    validators = {o: pydantic.TypeAdapter(hints.get(o, Any)) for o in options}
    return ModelEntry(name, factory, {k: bound[k] for k in fixed_names}, defaults, validators)


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> ModelEntry:
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelOptionError(
            f"unknown model {name!r}{hint}; `vidact models` or vidact.models.list_models() "
            "lists the names"
        )
    return entry


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` with their defaults (``num_classes`` has none)."""
    return dict(_lookup(name).defaults)


def check_model_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ModelOptionError`` for the first option of ``options`` that model ``name``
    does not take or whose value does not fit its annotation; builds nothing."""
    entry = _lookup(name)
    for key, value in options.items():
        validator = entry.validators.get(key)
        if validator is None:
            candidates = [o for o in entry.validators if o != "num_classes"]
            close = difflib.get_close_matches(key, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelOptionError(
                f"model {name!r} has no option {key!r}{hint}; its options are "
                f"{', '.join(candidates)}",
                key,
            )
        try:
            validator.validate_python(value)
        except pydantic.ValidationError as exc:
            reason = " or ".join(dict.fromkeys(pydantic_reason(e["msg"]) for e in exc.errors()))
            raise ModelOptionError(
                f"model {name!r} option {key}={value!r} is not valid: {reason[0].lower()}"
                f"{reason[1:]}",
                key,
            ) from None


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier; ``options``
    are checked first (``check_model_options``), unset ones take the registered defaults."""
    entry = _lookup(name)
    check_model_options(name, {"num_classes": num_classes, **options})
    kwargs = {**entry.defaults, **options}
    return entry.factory(**entry.fixed, num_classes=num_classes, **kwargs)


__all__ = [
    "COMMON_OPTIONS",
    "DropoutRate",
    "ModelOptionError",
    "NonNegative",
    "Positive",
    "build_model",
    "check_model_options",
    "list_models",
    "model_options",
    "register_model",
]
