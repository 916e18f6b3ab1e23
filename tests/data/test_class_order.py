"""A checkpoint's classes against a dataset's: the check itself, and evaluate, finetune and
resume refusing a checkpoint trained with another class order or count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
from tests.engine.test_evaluator import _controlled_checkpoint
from tests.engine.test_trainer import make_recipe
from vidact.data.class_order import (
    check_checkpoint_classes,
    check_checkpoint_file,
    read_class_info,
    write_class_info,
)
from vidact.data.manifest import Sample, read_label_map, write_label_map, write_manifest
from vidact.engine.checkpoint import save_checkpoint
from vidact.engine.evaluator import evaluate
from vidact.engine.trainer import build_model_for, train
from vidact.errors import VidactError

FILE = ["Moving something up", "Turning the camera left", "Pushing something"]


def _dataset(root: Path, classes: list[str], name: str = "sthv1", order: str = "file") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_label_map(root / "labels.txt", classes)
    write_class_info(root, name, classes, order)
    return root / "labels.txt"


def test_the_same_classes_in_the_same_order_pass(tmp_path: Path) -> None:
    label_map = _dataset(tmp_path / "d", FILE)
    for use in ("evaluate", "resume", "finetune"):
        check_checkpoint_classes("ckpt.pt", FILE, label_map, use)  # type: ignore[arg-type]
    assert read_class_info(tmp_path / "d") == {"dataset": "sthv1", "order": "file", "classes": 3}
    check_checkpoint_classes("ckpt.pt", ["a"], tmp_path / "nowhere.txt", "evaluate")  # no map


@pytest.mark.parametrize("use", ["evaluate", "resume", "finetune"])
def test_another_order_is_refused_with_the_fix(tmp_path: Path, use: str) -> None:
    label_map = _dataset(tmp_path / "d", FILE)
    with pytest.raises(VidactError) as error:
        check_checkpoint_classes("ckpt.pt", sorted(FILE), label_map, use)  # type: ignore[arg-type]
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"ckpt.pt: its classes are {label_map}'s in another order (sorted-name order vs the "
        "labels file's order: label 1 is 'Pushing something' in the checkpoint, 'Turning the "
        "camera left' in the dataset); prepare the dataset again with --class-order sorted, "
        "or every label would be wrong"
    )
    sorted_map = _dataset(tmp_path / "s", sorted(FILE), order="sorted")
    with pytest.raises(VidactError, match="with --class-order file"):
        check_checkpoint_classes("ckpt.pt", FILE, sorted_map, use)  # type: ignore[arg-type]


def test_another_count_is_refused_except_when_fine_tuning(tmp_path: Path) -> None:
    label_map = _dataset(tmp_path / "d", FILE)
    for use in ("evaluate", "resume"):
        with pytest.raises(VidactError, match="trained on 2 classes but .*labels.txt has 3"):
            check_checkpoint_classes("ckpt.pt", FILE[:2], label_map, use)  # type: ignore[arg-type]
    check_checkpoint_classes("ckpt.pt", FILE[:2], label_map, "finetune")  # a new classifier
    with pytest.raises(VidactError, match=r"its classes are not .*'s \(label 2 is 'x' in the"):
        check_checkpoint_classes("ckpt.pt", [*FILE[:2], "x"], label_map, "evaluate")


def test_the_authors_sthv1_checkpoints_need_sorted_order(tmp_path: Path) -> None:
    label_map = _dataset(tmp_path / "d", FILE)
    with pytest.raises(VidactError, match="prepare it again with --class-order sorted"):
        check_checkpoint_classes("released.pth", None, label_map, "evaluate")
    check_checkpoint_classes("released.pth", None, _dataset(tmp_path / "s", sorted(FILE),
                             order="sorted"), "evaluate")  # fmt: skip
    check_checkpoint_classes(
        "released.pth", None, _dataset(tmp_path / "k", FILE, "sthv2"), "evaluate"
    )  # fmt: skip  (their V2 tool keeps the file's order)


def _eval_dataset(root: Path, classes: list[str]) -> Path:
    """Three videos, one per label, and the label map `classes`."""
    from tests.conftest import numbered_frames, write_video

    root.mkdir(parents=True)
    samples = []
    for label in range(3):
        write_video(root / f"v{label}.mp4", numbered_frames(6, 32, 32))
        samples.append(Sample(f"v{label}.mp4", label, classes[label], 6))
    write_manifest(root / "val.jsonl", samples)
    write_label_map(root / "labels.txt", classes)
    return root


def test_evaluate_refuses_a_checkpoint_of_another_class_order(tmp_path: Path) -> None:
    weight, bias = torch.eye(3), torch.zeros(3)
    same = _eval_dataset(tmp_path / "same", ["a", "b", "c"])
    checkpoint = _controlled_checkpoint(tmp_path / "m.pt", same, weight, bias)
    result = evaluate([checkpoint], out=tmp_path / "e1", clips=1, crops=1)
    assert result.metrics["videos"] == 3
    _eval_dataset(tmp_path / "other", ["b", "a", "c"])
    with pytest.raises(VidactError, match="its classes are .*labels.txt's in another order"):
        evaluate([checkpoint], out=tmp_path / "e2", overrides=[f"data.root={tmp_path / 'other'}"])
    assert not (tmp_path / "e2").exists()


def test_finetune_and_resume_refuse_a_checkpoint_of_another_class_order(
    synthetic_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    labels = read_label_map(root / "labels.txt")
    recipe = make_recipe(root, tmp_path / "runs", train__epochs=1)
    model = build_model_for(recipe, len(labels))
    checkpoint = tmp_path / "other.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "labels": labels[::-1],
                                 "recipe": recipe.to_dict()})  # fmt: skip
    with pytest.raises(VidactError, match="in another order"):
        train(recipe, init_from=checkpoint)
    with pytest.raises(VidactError, match="in another order"):
        train(recipe, resume=str(checkpoint))
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made
    check_checkpoint_file(None, root / "labels.txt", "finetune")  # nothing to check


def test_finetuning_from_a_file_without_class_names_checks_only_a_kept_classifier(
    tmp_path: Path,
) -> None:
    label_map = _dataset(tmp_path / "d", FILE)  # Sth-V1 in the labels file's order
    kinetics = tmp_path / "k400.pth"
    torch.save({"state_dict": {"module.new_fc.weight": torch.zeros(400, 8)}}, kinetics)
    check_checkpoint_file(kinetics, label_map, "finetune")  # 400 -> 3 classes: a new head
    released = tmp_path / "sthv1.pth"
    torch.save({"state_dict": {"module.new_fc.weight": torch.zeros(3, 8)}}, released)
    with pytest.raises(VidactError, match="prepare it again with --class-order sorted"):
        check_checkpoint_file(released, label_map, "finetune")  # its head is kept
