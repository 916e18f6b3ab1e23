"""Which class gets which label: the class order of a prepared dataset, recorded in
OUT/classes.json, and the check that a checkpoint numbers its classes as the dataset does.

Two orders exist in released code for datasets that ship a labels file:
- `file`: label i is line (or entry) i of the labels file. mmaction2 does this for
  Something-Something V1 (its flip-label map pairs classes 2 and 4, the two camera turns),
  and the TSM/CT-Net tools for V2 (the labels JSON's order) and UCF101 (classInd.txt).
- `sorted`: label i is the i-th class name in sorted order. The TSN/TSM/CT-Net tools do
  this for Something-Something V1 (`gen_label_sthv1.py` sorts the names), so for 173 of
  the 174 classes their labels differ from the file's.
A checkpoint trained with one order and evaluated on data prepared with the other gets
wrong labels without any error, so training and evaluation compare the checkpoint's class
names (which every vidact checkpoint stores, in label order) with the dataset's label map
and refuse a mismatch with one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from vidact import console
from vidact.atomic import atomic_write_text
from vidact.data.manifest import read_label_map
from vidact.errors import VidactError

ClassOrder = Literal["file", "sorted"]
CLASS_ORDERS: tuple[str, ...] = ("file", "sorted")
CLASSES_FILE = "classes.json"
# The order in which the authors' TSN/TSM/CT-Net label tools number a dataset's classes,
# where it is not the file's: their released checkpoints (which store no class names)
# are checked against it.
RELEASED_ORDER: dict[str, str] = {"sthv1": "sorted"}
Use = Literal["evaluate", "resume", "finetune"]


def ordered_classes(names: Sequence[str], order: str, origin: str) -> list[str]:
    """`names` (a labels file's classes, in its order) in the order `order` asks for."""
    if order not in CLASS_ORDERS:
        raise VidactError(f"--class-order {order!r}: use file or sorted ({origin})")
    return sorted(names) if order == "sorted" else list(names)


def write_class_info(out: str | Path, dataset: str, classes: Sequence[str], order: str) -> None:
    """OUT/classes.json: the dataset, the class order and the class count (the names
    themselves are labels.txt, line i = label i)."""
    info = {"dataset": dataset, "order": order, "classes": len(classes)}
    atomic_write_text(Path(out) / CLASSES_FILE, json.dumps(info, indent=2) + "\n")


def read_class_info(root: str | Path) -> dict[str, Any]:
    """classes.json of a prepared dataset; {} for one prepared before it existed."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise VidactError(f"{path}: not valid JSON; prepare the dataset again") from None
    return info if isinstance(info, dict) else {}


def _describe(names: Sequence[str], recorded: str | None = None) -> str:
    if recorded == "file":
        return "the labels file's order"
    if recorded == "sorted" or list(names) == sorted(names):
        return "sorted-name order"
    return "another order"


def _first_difference(mine: Sequence[str], theirs: Sequence[str]) -> str:
    for label, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            return f"label {label} is {a!r} in the checkpoint, {b!r} in the dataset"
    return ""


def _check_released(checkpoint: Path, label_map: Path, labels: list[str]) -> None:
    """A file without class names (the authors' layout): only the known order of their
    label tools can be checked."""
    info = read_class_info(label_map.parent)
    wanted = RELEASED_ORDER.get(str(info.get("dataset")))
    if wanted is None or info.get("order", "file") == wanted:
        return
    if labels == ordered_classes(labels, wanted, str(label_map)):
        return
    raise VidactError(
        f"{checkpoint}: the authors' {info['dataset']} checkpoints number the classes in "
        f"{wanted}-name order, but {label_map.parent} was prepared with --class-order "
        f"{info.get('order', 'file')}; prepare it again with --class-order {wanted}"
    )


def check_checkpoint_classes(
    checkpoint: str | Path, checkpoint_labels: Sequence[str] | None, label_map: str | Path,
    use: Use,
) -> None:  # fmt: skip
    """Refuse, with one line, a checkpoint whose classes are not the dataset's in the same
    order. `checkpoint_labels`: the class names the checkpoint stores (None for a file
    without them, e.g. the authors' released checkpoints). `use`: "finetune" accepts
    another class count (the classifier starts fresh); "evaluate" and "resume" do not.
    A dataset without a label map is not checked."""
    checkpoint, label_map = Path(checkpoint), Path(label_map)
    if not label_map.is_file():
        return
    labels = read_label_map(label_map)
    if checkpoint_labels is None:
        _check_released(checkpoint, label_map, labels)
        return
    mine = [str(name) for name in checkpoint_labels]
    if mine == labels:
        return
    if len(mine) != len(labels):
        if use == "finetune":
            return  # the classifier is replaced: another dataset, as fine-tuning means
        raise VidactError(
            f"{checkpoint}: trained on {len(mine)} classes but {label_map} has {len(labels)}; "
            f"{use} it on the dataset it was trained on (data.root)"
        )
    if sorted(mine) == sorted(labels):
        recorded = read_class_info(label_map.parent).get("order")
        mine_order, theirs_order = _describe(mine), _describe(labels, recorded)
        fix = "sorted" if mine == sorted(mine) else "file"
        raise VidactError(
            f"{checkpoint}: its classes are {label_map}'s in another order ({mine_order} vs "
            f"{theirs_order}: {_first_difference(mine, labels)}); prepare the dataset again "
            f"with --class-order {fix}, or every label would be wrong"
        )
    if use == "finetune":
        console.warn(
            f"{checkpoint}: its {len(mine)} classes are not {label_map}'s "
            f"({_first_difference(mine, labels)}); its classifier is kept as it is"
        )
        return
    raise VidactError(
        f"{checkpoint}: its classes are not {label_map}'s ({_first_difference(mine, labels)}); "
        f"{use} it on the dataset it was trained on (data.root)"
    )


def _classifier_rows(state: Any) -> set[int]:
    """The output counts of what look like classifiers in a file without class names
    (`fc`, `new_fc`, `classifier`, `head` weights, DataParallel prefix or not)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = state.get("model", state) if isinstance(state, dict) else {}
    ends = ("fc.weight", "classifier.weight", "head.weight")
    return {
        int(value.shape[0])
        for key, value in (tensors.items() if isinstance(tensors, dict) else [])
        if str(key).endswith(ends) and getattr(value, "ndim", 0) == 2
    }


def check_checkpoint_file(checkpoint: str | Path | None, label_map: str | Path, use: Use) -> None:
    """`check_checkpoint_classes` for a checkpoint file (its stored class names, if any).
    A file without class names is fine-tuned from without a check unless its classifier
    has the dataset's class count (then it is kept, and its order matters)."""
    if checkpoint is None or not Path(label_map).is_file():
        return
    from vidact.safe_load import load_tensors_file

    state = load_tensors_file(checkpoint, "checkpoint")
    labels = state.get("labels") if isinstance(state, dict) else None
    if labels is not None and not isinstance(labels, list | tuple):
        labels = None
    kept_head = len(read_label_map(label_map)) in _classifier_rows(state)
    if labels is None and use == "finetune" and not kept_head:
        return  # the classifier starts fresh: no order to keep
    check_checkpoint_classes(checkpoint, labels, label_map, use)
