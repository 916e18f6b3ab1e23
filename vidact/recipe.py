"""Recipes: one YAML file per experiment, the single source of truth for a run.

A recipe has the sections data / model / optim / schedule / train / eval / output.

- `_base_: other.yaml` (or a list) inherits from other recipes: paths are relative to
  the file that names them, dictionaries merge deeply, lists and scalars replace.
- `overrides` such as `optim.lr=0.05` (the CLI's repeatable `--set`) are applied last;
  values are parsed as YAML, so `train.amp=bf16`, `data.scales=[1,0.875]` work.
- The schema rejects unknown keys with a did-you-mean, and type errors name the key,
  the file that set it and the expected type.
- `Recipe.to_yaml()` dumps the resolved recipe; loading that dump gives an equal object.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vidact.constants import FLOW_BOUND, IMAGENET_MEAN, IMAGENET_STD
from vidact.data.crops import Crops
from vidact.errors import RecipeError, pydantic_reason

BASE_KEY = "_base_"
OVERRIDE_SOURCE = "--set"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticDataConfig(_Section):
    """Generate the synthetic motion dataset into data.root when it is missing."""

    classes: int = Field(6, ge=1, le=12)
    videos_per_class: int = Field(50, ge=2)
    frames: int = Field(16, ge=2)
    size: int = Field(64, ge=16)
    seed: int = 0


class DataConfig(_Section):
    """Where samples come from and how clips are cut and augmented."""

    root: str = "data/synthetic"
    synthetic: SyntheticDataConfig | None = None
    train_manifest: str = "train.jsonl"
    val_manifest: str = "val.jsonl"
    label_map: str = "labels.txt"
    # rgb: decoded video frames or JPEG frame folders; flow: TV-L1 flow folders (flow CNN);
    # rgb+flow: both (two-stream).
    modality: Literal["rgb", "flow", "rgb+flow"] = "rgb"
    num_frames: int = Field(16, ge=1)
    # consecutive: T adjacent frames (rep-flow); dense: T frames `frame_stride` apart
    # (Kinetics, CT-Net); segment: TSN, one frame from each of T equal segments (Sth-Sth).
    sampler: Literal["consecutive", "dense", "segment"] = "consecutive"
    frame_stride: int = Field(1, ge=1)
    short_side: int = Field(256, ge=8)
    input_size: int = Field(224, ge=8)
    train_crop: Literal["multiscale", "random_resized", "center"] = "multiscale"
    # TSN / CT-Net multi-scale crop scales (CT-Net appendix A.1).
    scales: list[float] = Field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    hflip: bool = True
    mean: list[float] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = Field(default_factory=lambda: list(IMAGENET_STD))
    flow_bound: float = Field(FLOW_BOUND, gt=0)
    video_backend: Literal["auto", "decord", "pyav", "opencv"] = "auto"
    num_workers: int = Field(2, ge=0)
    pin_memory: bool = True


class ModelConfig(BaseModel):
    """`name` picks a registered model; other keys go to its constructor as kwargs.

    Extra keys are checked against the constructor's signature when the recipe loads, so
    a misspelt model option is reported like any other unknown key.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str
    num_classes: int | None = Field(None, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    weights: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """The constructor kwargs: everything except `name` and `num_classes`."""
        data = self.model_dump()
        data.pop("name")
        data.pop("num_classes")
        return data


class OptimConfig(_Section):
    """SGD with momentum 0.9, as both papers train (rep-flow appendix A; CT-Net A.1)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    # No weight decay on BN/bias parameters unless asked for.
    decay_norm_and_bias: bool = False
    # Rep-flow appendix A: flow parameters learn at 0.01 x lr ("otherwise the model
    # produced poor predictions").
    flow_lr_mult: float = Field(0.01, ge=0)
    # Extra lr multipliers by parameter-name prefix, e.g. {"fc": 5.0}.
    lr_mults: dict[str, float] = Field(default_factory=dict)
    # Parameter groups: "vidact" (the rules above) or "tsn", the policy of the TSN / CT-Net
    # authors' code from ImageNet: classifier weight 5x lr, its bias 10x, no decay; other
    # biases 2x, no decay; BatchNorm 1x, no decay (vidact.engine.optim).
    policy: Literal["vidact", "tsn"] = "vidact"
    clip_grad_norm: float | None = Field(None, gt=0)


class ScheduleConfig(_Section):
    """step: x gamma every `step_epochs` (rep-flow: 0.1 every 50); cosine with warm-up."""

    name: Literal["step", "cosine", "constant"] = "step"
    step_epochs: int = Field(50, ge=1)
    milestones: list[int] | None = None
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    # cosine: the lr decays to min_lr_ratio x lr.
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    deterministic: bool = False
    val_every: int = Field(1, ge=1)
    # Where no progress bar is drawn (a SLURM log, a pipe): a progress line every N steps.
    log_every: int = Field(10, ge=1)
    freeze: Literal["none", "backbone", "bn"] = "none"
    # Stop once more than this share of an epoch's clips failed to decode (1: never).
    max_bad_video_fraction: float = Field(0.1, ge=0, le=1)
    # Gradient accumulation: one optimiser step every N batches, so the effective batch is
    # batch_size x processes x N (a paper's batch of 64 on fewer devices).
    accumulate_steps: int = Field(1, ge=1)
    # Under torchrun on GPUs: BatchNorm statistics over every process's batch
    # (torch.nn.SyncBatchNorm.convert_sync_batchnorm).
    sync_bn: bool = False


class EvalConfig(_Section):
    split: str = "val"
    clips: int = Field(1, ge=1)
    # "1" (centre), "3" (left/centre/right), "10" (5 crops + flips) or "random:K".
    crops: str = "1"
    crop_size: int | None = Field(None, ge=8)
    short_side: int | None = Field(None, ge=8)
    average: Literal["softmax", "logits"] = "softmax"
    batch_size: int = Field(4, ge=1)
    ema: bool = True

    @field_validator("crops", mode="before")
    @classmethod
    def _check_crops(cls, value: Any) -> str:
        return str(Crops.parse(value))


class OutputConfig(_Section):
    dir: str = "runs"
    # Epoch checkpoints (checkpoints/epoch-NNNN.pt) kept besides best.pt and last.pt.
    keep_last: int = Field(0, ge=0, strict=True)
    # TensorBoard events in <run>/tensorboard/ (engine/tensorboard.py); needs the package:
    # pip install 'vidact[tensorboard]'.
    tensorboard: bool = False


class Recipe(_Section):
    """A resolved recipe (after `_base_` inheritance and overrides)."""

    name: str = "recipe"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Recipe.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


# --------------------------------------------------------------------------------------
# Loading: _base_ inheritance with provenance, overrides, validation with good messages
# --------------------------------------------------------------------------------------

# Which file (or which `--set KEY`) set each key: the source an error message names.
Sources = dict[tuple[str, ...], str]


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe file, resolve `_base_`, apply `overrides` ("a.b=value"), validate."""
    path = Path(path)
    sources: Sources = {}
    data = _load_with_bases(path, stack=(), sources=sources)
    data.setdefault("name", path.stem)
    for item in overrides:
        _apply_override(data, item, sources)
    return _validate(data, sources, default_source=str(path))


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "<dict>"
) -> Recipe:
    """Validate an already-resolved recipe dictionary (e.g. one stored in a checkpoint)."""
    data = copy.deepcopy(data)
    sources: Sources = {}
    _record_sources(data, (), source, sources)
    for item in overrides:
        _apply_override(data, item, sources)
    return _validate(data, sources, default_source=source)


def _read_yaml(path: Path, named_by: str | None) -> dict[str, Any]:
    where = f" (named in {named_by})" if named_by else ""
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found{where}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}:{line}: not valid YAML: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise RecipeError(
            f"{path}: a recipe must be a mapping of sections, got {type(loaded).__name__}"
        )
    return loaded


def _load_with_bases(
    path: Path, stack: tuple[Path, ...], sources: Sources, named_by: str | None = None
) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(p.name for p in (*stack, resolved))
        raise RecipeError(f"{path}: _base_ cycle: {chain}; remove one of these _base_ links")
    raw = _read_yaml(path, named_by)
    bases = raw.pop(BASE_KEY, None)
    merged: dict[str, Any] = {}
    if bases is not None:
        base_list = [bases] if isinstance(bases, str) else bases
        if not isinstance(base_list, list) or not all(isinstance(b, str) for b in base_list):
            raise RecipeError(f"{path}: _base_ must be a file name or a list of file names")
        for base in base_list:
            base_data = _load_with_bases(
                path.parent / base, (*stack, resolved), sources, named_by=str(path)
            )
            _deep_merge(merged, base_data)
    _record_sources(raw, (), str(path), sources)
    _deep_merge(merged, raw)
    return merged


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _record_sources(
    data: dict[str, Any], prefix: tuple[str, ...], source: str, sources: Sources
) -> None:
    for key, value in data.items():
        loc = (*prefix, str(key))
        sources[loc] = source
        if isinstance(value, dict):
            _record_sources(value, loc, source, sources)


def _apply_override(data: dict[str, Any], item: str, sources: Sources) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    source = f"{OVERRIDE_SOURCE} {key}"  # what the user typed is what an error names
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:  # a section this --set creates (a typo such as `optimizer.lr`)
            child = node[part] = {}
            sources[tuple(parts[: depth + 1])] = source
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError(f"--set {key}: '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    loc = tuple(parts)
    sources[loc] = source
    if isinstance(value, dict):
        _record_sources(value, loc, source, sources)


def _source_of(loc: tuple[str, ...], sources: Sources, default: str) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return default


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """Names that are valid at the parent of `loc` (for did-you-mean)."""
    if len(loc) == 1:
        return list(Recipe.model_fields)
    section = SECTIONS.get(loc[0])
    if section is not None and len(loc) == 2:
        return list(section.model_fields)
    return []


def _did_you_mean(word: str, candidates: list[str], prefix: tuple[str, ...] = ()) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join((*prefix, close[0]))}'?)" if close else ""


_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(error: Any, loc: tuple[str, ...], sources: Sources, default: str) -> str:
    key = ".".join(loc)
    where = f"{_source_of(loc, sources, default)}: "
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(loc[-1], _fields_at(loc), loc[:-1])
        return f"{where}unknown key '{key}'{hint}"
    if error["type"] == "missing":
        return f"{where}missing '{key}' (every recipe needs it)"
    expected = _EXPECTED.get(error["type"])
    got = error.get("input")
    if expected is not None:
        return f"{where}'{key}' must be {expected}, got {got!r}"
    message = pydantic_reason(str(error["msg"]))
    return f"{where}'{key}': {message} (got {got!r})"


def _validate(data: dict[str, Any], sources: Sources, default_source: str) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            messages.append(_describe(error, loc, sources, default_source))
        # One line per problem; the first is what the user sees first.
        raise RecipeError("; ".join(dict.fromkeys(messages))) from None
    _check_model_kwargs(recipe, sources, default_source)
    return recipe


def _check_model_kwargs(recipe: Recipe, sources: Sources, default_source: str) -> None:
    """Reject model options that the named model does not take, or values it cannot use."""
    from vidact.models import ModelOptionError, check_model_options, list_models, model_options

    name = recipe.model.name
    if name not in list_models():
        hint = _did_you_mean(name, list_models())
        source = _source_of(("model", "name"), sources, default_source)
        raise RecipeError(
            f"{source}: model.name: unknown model '{name}'{hint}; `vidact models` lists them"
        )
    options = model_options(name)
    for key in recipe.model.model_extra or {}:
        if key not in options:
            raise RecipeError(
                f"{_model_key_source(key, sources, default_source)}unknown key 'model.{key}' "
                f"for model '{name}'{_did_you_mean(key, list(options), ('model',))}"
            )
    try:
        check_model_options(name, recipe.model.kwargs())
    except ModelOptionError as exc:
        raise RecipeError(f"{_model_key_source(exc.key, sources, default_source)}{exc}") from None


def _model_key_source(key: str | None, sources: Sources, default_source: str) -> str:
    return f"{_source_of(('model', key or 'name'), sources, default_source)}: "
