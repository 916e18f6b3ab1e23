"""HMDB51: the official three splits -> records per split.

Annotations: the `testTrainMulti_7030_splits` folder (or any folder above it), holding
`<class>_test_split<k>.txt` for k = 1, 2, 3. Each line is `<video>.avi <id>` with
id 1 = train, 2 = test, 0 = not used in that split.

Videos: the rar-extracted layout `<videos>/<class>/<video>.avi` (found by file name, so
a flat folder works too). Classes are the sorted class names (51), labels 0..50.

Splits are named `train_split<k>` / `test_split<k>`. A video belongs to several splits
but is extracted once: its output name `<class>/<video stem>` does not depend on the split.
"""

from __future__ import annotations

import re
from pathlib import Path

from vidact.data.sources.common import (
    SourceDataset,
    SourceRecord,
    index_files,
    pick,
    read_lines,
    require_content,
    require_dir,
    safe_name,
    shared_videos_note,
)
from vidact.data.sources.registry import DatasetSource
from vidact.errors import VidactError

_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$", re.IGNORECASE)
_ROLE = {"1": "train", "2": "test"}


def _split_files(annotations: Path) -> dict[tuple[str, int], Path]:
    if annotations.is_file():
        annotations = annotations.parent
    if not annotations.is_dir():
        raise VidactError(f"{annotations}: annotations not found; check --annotations")
    found: dict[tuple[str, int], Path] = {}
    for path in sorted(annotations.rglob("*.txt")):
        match = _SPLIT_FILE.match(path.name)
        if match:
            found[(match["cls"], int(match["k"]))] = path
    if not found:
        raise VidactError(
            f"{annotations}: no HMDB51 split files (<class>_test_split1.txt ...); point "
            "--annotations at the extracted testTrainMulti_7030_splits folder"
        )
    return found


def load_hmdb51(videos: str | Path, annotations: str | Path) -> SourceDataset:
    videos = require_dir(Path(videos), "videos folder", "--videos")
    files = _split_files(Path(annotations))
    classes = sorted({cls for cls, _ in files})
    label_of = {name: index for index, name in enumerate(classes)}
    folds = sorted({k for _, k in files})
    for cls in classes:
        absent = [k for k in folds if (cls, k) not in files]
        if absent:
            raise VidactError(
                f"{annotations}: {cls}_test_split{absent[0]}.txt is missing; "
                "the split files must be complete"
            )
    index = index_files(videos, by="name")
    splits: dict[str, list[SourceRecord]] = {}
    for k in folds:
        train: list[SourceRecord] = []
        test: list[SourceRecord] = []
        for cls in classes:
            path = files[(cls, k)]
            require_content(path, "HMDB51 split file ('<video>.avi <id>' lines)")
            for number, line in read_lines(path):
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise VidactError(
                        f"{path}:{number}: expected '<video>.avi <id>' with id 0, 1 or 2"
                    )
                name, role = parts
                if role == "0":
                    continue
                found = index.get(name)
                video = pick(found, (cls,)) if found else videos / cls / name
                record = SourceRecord(
                    key=f"{safe_name(cls)}/{safe_name(Path(name).stem)}",
                    video=video,
                    label=label_of[cls],
                    label_name=cls,
                )
                (train if _ROLE[role] == "train" else test).append(record)
        splits[f"train_split{k}"] = train
        splits[f"test_split{k}"] = test
    dataset = SourceDataset("hmdb51", classes, splits, class_order="sorted")
    pairs = [(f"train_split{k}", f"test_split{k}") for k in folds]
    dataset.notes.extend(shared_videos_note(dataset, pairs, what="video"))
    return dataset


HELP = """HMDB51 from the official split files (testTrainMulti_7030_splits).

    <class>_test_split<k>.txt: id 1 = train, 2 = test, 0 = unused. Writes
    train_split<k>.jsonl and test_split<k>.jsonl for k = 1, 2, 3; each video is
    extracted once. --videos is the rar-extracted folder of class folders.

    Examples:
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/hmdb51
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/h --mode videos
      vidact prepare hmdb51 --videos hmdb51 \\
          --annotations testTrainMulti_7030_splits --out data/hf --flow tvl1
    """

SOURCES = (DatasetSource("hmdb51", load_hmdb51, HELP),)
