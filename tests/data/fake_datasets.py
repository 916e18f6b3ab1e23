"""Tiny fake copies of the official dataset layouts: generated videos, real annotation formats.

Every video is a few frames of `numbered_frames` (each frame carries its index), so tests
can check both counts and which frames were kept. Each builder returns the folders to
pass as --videos / --annotations and what a correct prepare must find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from tests.conftest import numbered_frames, write_video

HEIGHT, WIDTH = 48, 64


@dataclass
class FakeDataset:
    videos: Path
    annotations: Path
    classes: list[str]
    splits: dict[str, int]  # split -> labelled samples the annotations list
    frames: dict[str, int] = field(default_factory=dict)  # video file name -> frame count
    missing: list[str] = field(default_factory=list)  # listed but absent video names


def video(path: Path, frames: int, fourcc: str = "mp4v", fps: float = 25.0) -> Path:
    return write_video(path, numbered_frames(frames, HEIGHT, WIDTH), fps=fps, fourcc=fourcc)


def corrupt(path: Path) -> Path:
    """Replace a video by bytes no decoder accepts."""
    path.write_bytes(b"\x00not a video\x00" * 64)
    return path


def _frames_for(index: int) -> int:
    return 5 + index % 4  # 5..8 frames: counts differ between videos


# ------------------------------------------------------------------------------ Kinetics

KINETICS_CLASSES = ["air drumming", "abseiling", "passing American football (in game)"]


def kinetics_id(label: int, index: int) -> str:
    return f"-x{label}_y{index}Q"  # real ids start with '-' and contain '_'


def make_kinetics(
    root: Path,
    *,
    per_split: dict[str, int] | None = None,
    class_folders: bool = True,
    missing: int = 1,
    untrimmed: bool = False,
) -> FakeDataset:
    """Kinetics CSVs (train.csv, validate.csv with is_cc, unlabelled test.csv) and clips
    named `{id}_{start:06d}_{end:06d}.mp4`, in class sub-folders or flat. The first
    `missing` train clips are listed but absent. With `untrimmed`, the first val clip is
    stored as the whole `{id}.mp4` (30 frames at 10 fps), the action at seconds [1, 2)."""
    per_split = per_split or {"train": 2, "val": 1}
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    videos = root / "videos"
    data = FakeDataset(videos, annotations, sorted(KINETICS_CLASSES), {})
    counter = 0
    for split, count in per_split.items():
        file_name = "validate.csv" if split == "val" else f"{split}.csv"
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        for label, name in enumerate(KINETICS_CLASSES):
            for index in range(count):
                youtube_id = kinetics_id(label, counter)
                start, end = 10 * index, 10 * index + 10
                csv_label = f'"{name}"' if "," in name or "(" in name else name
                lines.append(f"{csv_label},{youtube_id},{start},{end},{split},0")
                stem = f"{youtube_id}_{start:06d}_{end:06d}"
                folder = videos / split / (name if class_folders else "")
                frames = _frames_for(counter)
                counter += 1
                if split == "train" and len(data.missing) < missing:
                    data.missing.append(f"{stem}.mp4")
                    continue
                if untrimmed and split == "val" and label == 0 and index == 0:
                    video(folder / f"{youtube_id}.mp4", 30, fps=10.0)
                    data.frames[f"{youtube_id}.mp4"] = 30
                    lines[-1] = f"{csv_label},{youtube_id},1,2,{split},0"
                    continue
                video(folder / f"{stem}.mp4", frames)
                data.frames[f"{stem}.mp4"] = frames
        (annotations / file_name).write_text("\n".join(lines) + "\n")
        data.splits[split] = count * len(KINETICS_CLASSES)
    test = ["youtube_id,time_start,time_end,split", "zzz_test,0,10,test"]
    (annotations / "test.csv").write_text("\n".join(test) + "\n")
    return data


# ------------------------------------------------------------------------------ HMDB51

HMDB_CLASSES = ["brush_hair", "cartwheel", "sword_exercise"]


def make_hmdb51(root: Path, per_class: int = 4) -> FakeDataset:
    """testTrainMulti_7030_splits/<class>_test_split<k>.txt (ids 1 train, 2 test, 0 unused,
    trailing spaces as in the real files) and the rar-extracted <class>/<video>.avi."""
    splits_dir = root / "annotations" / "testTrainMulti_7030_splits"
    splits_dir.mkdir(parents=True)
    videos = root / "videos"
    data = FakeDataset(videos, splits_dir, sorted(HMDB_CLASSES), {})
    roles = ["1", "1", "2", "0"]  # per split k the roles rotate, so every split differs
    for label, name in enumerate(HMDB_CLASSES):
        names = [f"Video_{name}_f_cm_np1_ri_med_{i}.avi" for i in range(per_class)]
        for i, file_name in enumerate(names):
            frames = _frames_for(label * per_class + i)
            video(videos / name / file_name, frames, fourcc="XVID")
            data.frames[file_name] = frames
        for k in (1, 2, 3):
            lines = [f"{n} {roles[(i + k) % len(roles)]} " for i, n in enumerate(names)]
            (splits_dir / f"{name}_test_split{k}.txt").write_text("\n".join(lines) + "\n")
    for k in (1, 2, 3):
        train = sum(roles[(i + k) % 4] == "1" for i in range(per_class)) * len(HMDB_CLASSES)
        test = sum(roles[(i + k) % 4] == "2" for i in range(per_class)) * len(HMDB_CLASSES)
        data.splits |= {f"train_split{k}": train, f"test_split{k}": test}
    return data


# ------------------------------------------------------------------------------ UCF101

UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def _ucf_file(name: str, group: int, clip: int) -> str:
    spelled = "HandStandPushups" if name == "HandstandPushups" else name  # the real quirk
    return f"v_{spelled}_g{group:02d}_c{clip:02d}.avi"


def make_ucf101(root: Path, groups: int = 3) -> FakeDataset:
    """ucfTrainTestlist/classInd.txt + trainlist0k/testlist0k (k = 1, 2) and UCF-101/<Class>/.
    Split k tests on group k and trains on the others."""
    lists = root / "annotations" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    videos = root / "videos" / "UCF-101"
    data = FakeDataset(videos, lists, list(UCF_CLASSES), {})
    index = "".join(f"{i} {name}\r\n" for i, name in enumerate(UCF_CLASSES, 1))  # CRLF, as shipped
    (lists / "classInd.txt").write_text(index)
    for label, name in enumerate(UCF_CLASSES):
        for group in range(1, groups + 1):
            file_name = _ucf_file(name, group, 1)
            frames = _frames_for(label * groups + group)
            video(videos / name / file_name, frames, fourcc="XVID")
            data.frames[file_name] = frames
    for k in (1, 2):
        train, test = [], []
        for label, name in enumerate(UCF_CLASSES):
            for group in range(1, groups + 1):
                path = f"{name}/{_ucf_file(name, group, 1)}"
                if group == k:
                    test.append(path)
                else:
                    train.append(f"{path} {label + 1}")
        (lists / f"trainlist0{k}.txt").write_text("\r\n".join(train) + "\r\n")
        (lists / f"testlist0{k}.txt").write_text("\r\n".join(test) + "\r\n")
        data.splits |= {f"train_split{k}": len(train), f"test_split{k}": len(test)}
    return data


# ------------------------------------------------------------------------------ Something

STH_TEMPLATES = [
    "Holding [something] next to [something]",
    "Putting [something] on a surface",
    "Pushing [something] from left to right",
]


def _sth_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def make_sthv1(root: Path, per_class: dict[str, int] | None = None) -> FakeDataset:
    """something-something-v1-{labels,train,validation,test}.csv (';'-separated) and JPEG
    frame folders <id>/00001.jpg."""
    per_class = per_class or {"train": 2, "val": 1}
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    frames_root = root / "20bn-something-something-v1"
    classes = [_sth_class(t) for t in STH_TEMPLATES]
    data = FakeDataset(frames_root, annotations, classes, {})
    (annotations / "something-something-v1-labels.csv").write_text("\n".join(classes) + "\n")
    next_id = 1000
    for split, count in per_class.items():
        word = "validation" if split == "val" else split
        lines = []
        for name in classes:
            for _ in range(count):
                next_id += 1
                frames = _frames_for(next_id)
                folder = frames_root / str(next_id)
                folder.mkdir(parents=True)
                for i, frame in enumerate(numbered_frames(frames, HEIGHT, WIDTH), start=1):
                    cv2.imwrite(
                        str(folder / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                    )
                data.frames[str(next_id)] = frames
                lines.append(f"{next_id};{name}")
        (annotations / f"something-something-v1-{word}.csv").write_text("\n".join(lines) + "\n")
        data.splits[split] = len(lines)
    (annotations / "something-something-v1-test.csv").write_text("99999\n")
    return data


def make_sthv2(root: Path, per_class: dict[str, int] | None = None) -> FakeDataset:
    """something-something-v2-{labels,train,validation,test}.json and <id>.webm (VP8)."""
    per_class = per_class or {"train": 2, "val": 1}
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    videos = root / "20bn-something-something-v2"
    classes = sorted(_sth_class(t) for t in STH_TEMPLATES)
    data = FakeDataset(videos, annotations, classes, {})
    labels = {name: str(i) for i, name in enumerate(classes)}
    (annotations / "something-something-v2-labels.json").write_text(json.dumps(labels, indent=1))
    next_id = 200
    for split, count in per_class.items():
        word = "validation" if split == "val" else split
        entries = []
        for template in STH_TEMPLATES:
            for _ in range(count):
                next_id += 1
                frames = _frames_for(next_id)
                video(videos / f"{next_id}.webm", frames, fourcc="VP80")
                data.frames[f"{next_id}.webm"] = frames
                entries.append(
                    {
                        "id": str(next_id),
                        "label": template.replace("[something]", "a cup"),
                        "template": template,
                        "placeholders": ["a cup"],
                    }
                )
        (annotations / f"something-something-v2-{word}.json").write_text(json.dumps(entries))
        data.splits[split] = len(entries)
    (annotations / "something-something-v2-test.json").write_text(json.dumps([{"id": "1"}]))
    return data


# ------------------------------------------------------------------------------ folder


def make_folder(root: Path, per_class: dict[str, int] | None = None) -> FakeDataset:
    """<class>/<name>.<ext>: a plain folder of videos, mixed containers."""
    per_class = per_class or {"cats": 5, "dogs": 3, "owls": 4}
    videos = root / "videos"
    data = FakeDataset(videos, videos, sorted(per_class), {"train": sum(per_class.values())})
    for name, count in per_class.items():
        for i in range(count):
            ext, fourcc = (".avi", "XVID") if i % 2 else (".mp4", "mp4v")
            frames = _frames_for(i)
            video(videos / name / f"{name} clip {i}{ext}", frames, fourcc=fourcc)
            data.frames[f"{name} clip {i}{ext}"] = frames
    return data


def image_count(folder: Path) -> int:
    return len(list(folder.glob("img_*.jpg")))


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_frame_folder_classes(
    root: Path, per_class: dict[str, int] | None = None, template: str = "frame_{:06d}.png"
) -> FakeDataset:
    """<class>/<video>/<numbered images>: class folders of frame folders (0-based PNGs by
    default, as many frame dumps are)."""
    per_class = per_class or {"cats": 3, "dogs": 2}
    videos = root / "frames"
    data = FakeDataset(videos, videos, sorted(per_class), {"train": sum(per_class.values())})
    for name, count in per_class.items():
        for i in range(count):
            frames = _frames_for(i)
            folder = videos / name / f"{name} clip {i}"
            folder.mkdir(parents=True)
            for number, frame in enumerate(numbered_frames(frames, HEIGHT, WIDTH)):
                cv2.imwrite(str(folder / template.format(number)), frame[..., ::-1])
            data.frames[folder.name] = frames
    return data
