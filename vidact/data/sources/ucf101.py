"""UCF101: classInd.txt and trainlist0k.txt / testlist0k.txt -> records per split.

Annotations: the `ucfTrainTestlist` folder (or classInd.txt inside it).
  classInd.txt     `1 ApplyEyeMakeup` ... (1-based; label = index - 1)
  trainlist01.txt  `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`
  testlist01.txt   `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`  (label from the folder)

Videos: `<videos>/<Class>/<file>.avi` as extracted from UCF101.rar (found by file name if
the class folders are missing). Class folders are matched case-insensitively because the
official lists spell some names differently from the files (HandstandPushups vs
v_HandStandPushups_*.avi).

Splits are named `train_split<k>` / `test_split<k>`; each video is extracted once, as
`<Class>/<file stem>`.
"""

from __future__ import annotations

import re
from pathlib import Path

from vidact.data.class_order import ordered_classes
from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    find_annotation,
    index_files,
    read_lines,
    require_content,
    require_dir,
    safe_name,
    shared_videos_note,
)
from vidact.data.sources.registry import CLASS_ORDER_OPTION, DatasetSource
from vidact.errors import VidactError

_LIST_FILE = re.compile(r"^(?P<role>train|test)list(?P<k>\d+)\.txt$", re.IGNORECASE)


def _read_class_index(path: Path) -> list[str]:
    require_content(path, "UCF101 classInd.txt ('<index> <ClassName>' lines)")
    entries: dict[int, str] = {}
    for number, line in read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise VidactError(f"{path}:{number}: expected '<index> <ClassName>', got {line!r}")
        entries[int(parts[0])] = parts[1].strip()
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise VidactError(f"{path}: class indices must run 1..{len(entries)} without gaps")
    return [entries[i] for i in range(1, len(entries) + 1)]


def _read_list(
    list_file: Path, videos: Path, index_classes: list[str], classes: list[str],
    by_name: dict[str, list[Path]],
) -> list[SourceRecord]:  # fmt: skip
    """The records of one trainlist0k/testlist0k file (labels in `classes`' order)."""
    require_content(list_file, "UCF101 split list ('<Class>/<video>.avi [index]' lines)")
    file_label = {name.lower(): index for index, name in enumerate(index_classes)}
    label_of = {name.lower(): index for index, name in enumerate(classes)}
    records: list[SourceRecord] = []
    for number, line in read_lines(list_file):
        parts = line.split()
        relative = parts[0].replace("\\", "/")
        folder, _, name = relative.rpartition("/")
        label = label_of.get(folder.lower())
        if label is None:
            raise VidactError(
                f"{list_file}:{number}: class folder {folder!r} is not in classInd.txt"
            )
        index = file_label[folder.lower()] + 1
        if len(parts) > 1 and parts[1].isdigit() and int(parts[1]) != index:
            raise VidactError(
                f"{list_file}:{number}: label {parts[1]} disagrees with folder {folder!r} "
                f"(classInd.txt gives {index})"
            )
        video = videos / relative
        if not video.exists() and name.lower() in by_name:
            video = by_name[name.lower()][0]
        records.append(
            SourceRecord(
                key=f"{safe_name(classes[label])}/{safe_name(Path(name).stem)}",
                video=video,
                label=label,
                label_name=classes[label],
            )
        )
    return records


def load_ucf101(
    videos: str | Path, annotations: str | Path, *, class_order: str = "file"
) -> SourceDataset:
    videos = require_dir(Path(videos), "videos folder", "--videos")
    class_file = find_annotation(Path(annotations), ["classInd.txt"], "UCF101 classInd.txt")
    assert class_file is not None
    index_classes = _read_class_index(class_file)
    classes = ordered_classes(index_classes, class_order, str(class_file))
    lists: dict[tuple[str, int], Path] = {}
    for path in sorted(class_file.parent.iterdir()):
        match = _LIST_FILE.match(path.name)
        if match:
            lists[(match["role"].lower(), int(match["k"]))] = path
    if not lists:
        raise VidactError(f"{class_file.parent}: no trainlist01.txt / testlist01.txt next to it")
    by_name = {name.lower(): paths for name, paths in index_files(videos, by="name").items()}
    splits: dict[str, list[SourceRecord]] = {}
    folds = sorted({k for _, k in lists})
    for k in folds:
        for role in ("train", "test"):
            list_file = lists.get((role, k))
            if list_file is not None:
                splits[f"{role}_split{k}"] = _read_list(
                    list_file, videos, index_classes, classes, by_name
                )
    dataset = SourceDataset("ucf101", classes, splits, class_order=class_order)
    pairs = [(f"train_split{k}", f"test_split{k}") for k in folds]
    dataset.notes.extend(shared_videos_note(dataset, pairs, what="video"))
    return dataset


HELP = """UCF101 from ucfTrainTestlist (classInd.txt, trainlist0k, testlist0k).

    Writes train_split<k>.jsonl and test_split<k>.jsonl for k = 1, 2, 3; each
    video is extracted once. --videos is the UCF-101 folder of class folders.
    Labels follow classInd.txt (as TSN, TSM and mmaction2 do); --class-order
    sorted numbers the sorted names instead.

    Examples:
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101-raw --mode none
      vidact prepare ucf101 --videos UCF-101 \\
          --annotations ucfTrainTestlist --out data/ucf101-flow --flow tvl1
    """

SOURCES = (DatasetSource("ucf101", load_ucf101, HELP, options=(CLASS_ORDER_OPTION,)),)
