"""Draw docs/images/predict_timeline.png: `vidact.predict` with sliding windows on a long
video stitched from the quickstart's validation videos (one of each of four classes).

    python docs/images/make_predict_timeline.py CHECKPOINT DATA_ROOT OUT_DIR

CHECKPOINT: a quickstart run's best.pt; DATA_ROOT: its data.root (data/quickstart).
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

import vidact
from vidact.data.manifest import read_manifest
from vidact.data.video import read_all_frames

CLASSES = ("translate_right", "rotate_cw", "translate_up", "rotate_ccw")


def stitch(root: Path, target: Path) -> Path:
    """The first val video of each of CLASSES, one after another, as an MP4 at 25 fps."""
    samples = read_manifest(root / "val.jsonl")
    frames = [
        read_all_frames(root / next(s.path for s in samples if s.label_name == name))
        for name in CLASSES
    ]
    video = np.concatenate(frames)
    with av.open(str(target), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv444p"
        stream.options = {"crf": "0"}  # lossless: the frames the model sees are the dataset's
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return target


def main() -> None:
    checkpoint, root, out = (Path(a) for a in sys.argv[1:4])
    out.mkdir(parents=True, exist_ok=True)
    video = stitch(root, out / "four_motions.mp4")
    result = vidact.predict(checkpoint, [video], window=0.32, stride=0.08, top_k=3, out=out)
    print(result.videos[0].files["timeline"])


if __name__ == "__main__":
    main()
