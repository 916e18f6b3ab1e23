"""`vidact prepare`: the scalable pipeline shared by every dataset source.

`pipeline.prepare(dataset, videos, annotations, out, ...)` reads a dataset's annotations through its
source module (found in the registry, `vidact.data.sources`) and hands the records to
`pipeline.prepare_dataset(source, out, options, ...)`, which does the work:

    OUT/
      labels.txt                    label map, line i = class i
      <split>.jsonl                 manifests (vidact.data.manifest.Sample per line)
      <split>_rawframes.txt         --mode frames: mmaction2 list `frames/<key> <frames> <label>`
      <split>_videos.txt            --mode videos/none: mmaction2 list `<path> <label>`
      frames/<key>/img_00001.jpg    --mode frames: JPEG frames, short side resized, 1-based
      videos/<key>.mp4              --mode videos: short-side resized MPEG-4 videos
      flow/<key>/x_00001.jpg, y_...  --flow tvl1: quantised TV-L1 flow, pair t = frame t -> t+1
      flow.json                     --flow tvl1: the bound and encoding of the flow images
      <split>_flow.txt              --flow tvl1: mmaction2 list `flow/<key> <pairs> <label>`
      failures.jsonl                every video that failed, is missing or was prepared with a
                                    warning (truncated), with the reason and a status
      prepare.json                  the settings; a re-run with other settings is refused
      .prepare/done-<tag>.jsonl     what is finished (key, frames, bytes), appended live
      .prepare/failed-<tag>.jsonl   what failed in the last run of that shard
      .prepare/decoders.log         what FFmpeg and decord wrote to stderr (never the terminal)

Manifest paths are relative to OUT (the manifest's folder), so OUT can be moved as a
whole. With `--mode none` nothing is copied: the manifests point at the original videos
through a relative path from OUT (`../kinetics/train/...`); moving OUT then needs
moving the videos alongside, or re-running prepare (it only probes).

Resume: every video is written into a temporary sibling and renamed when complete
(`vidact.atomic`), then appended to the done record. A re-run skips what the record
lists and whose output exists, retries failures and missing videos, and removes the
debris a killed run left for the videos it redoes.

Shards: `shard=(k, n)` takes every n-th video (k = 1..n) of the sorted list of outputs,
so n machines (or a SLURM array) writing into one shared OUT split the work exactly.
Each shard keeps its own done/failed record (`<tag>` = `3of8`, or `all` without a
shard). Whichever run finds every video of the dataset accounted for (done or failed,
by any shard) writes the manifests, the lists and failures.jsonl; re-running without a
shard afterwards is always safe and only rewrites them.

Workers decode with decord (OpenCV when decord cannot read a file), one thread each,
in a pool of processes over videos (`pool.py`: a worker that dies fails only its
video, one that takes longer than `video_timeout` is stopped and fails its video, and every
worker ends with the main process, even a killed one). Frames are resized before encoding
(INTER_LINEAR, never upscaled) and JPEG-encoded by OpenCV. A worker never raises: every
problem with a video becomes a line in failures.jsonl; a source that is no regular file (a
FIFO, a directory) is failed before anything opens it. Only a full disk and a stop signal
(SIGINT, SIGTERM: `faults.py`, what was finished is recorded) stop the run; the summary's
`outcome` is the exit code for scripts (3: more than `max_failed` failed, 4: none done).

Flow (`PrepareOptions(flow="tvl1")`): the worker also converts each frame it writes (after
the short-side resize, before JPEG or MPEG-4 coding) to grayscale and feeds it to TV-L1
(`vidact.flow.compute_flow`, chunks of FLOW_CHUNK pairs so memory stays bounded), and
writes the flow quantised with `quantize_flow(flow, bound)` as x_/y_ JPEG pairs into a
temporary `flow/<key>` renamed into place just before the frames (or video) are: frames
and flow of a video are one atomic, resumable unit, and a video counts as finished only
when both exist. With `--mode none` the worker decodes the whole original video (at the
short side) for the flow alone. A torch backend runs with one intra-op thread per
worker process, as OpenCV does: parallelism comes from the pool.

Extension point: `extra_step(job, output)` runs inside the worker after a video's frames
or video are written and before they are renamed into place, so anything it writes next
to them (e.g. optical flow) is part of the same atomic, resumable unit. It returns the
bytes it wrote and must be a picklable top-level function.

The modules, in the order a video goes through them (import their names from them: this
file imports nothing, so that the command line and the workers load only what they use):

    options.py    what prepare is asked to do: PrepareOptions, one video's job and result,
                  output paths, shards, frame-index selection
    faults.py     sources no reader may open, stop signals, exit codes
    estimate.py   the disk check before a run
    pool.py       the process pool over videos, its crash recovery and time limit
    lifeline.py   worker processes that end with the main process
    decoder_log.py  the decoders' stderr into OUT/.prepare/decoders.log
    worker.py     one video's output, atomically (runs in a worker process)
    frames.py     frame decode (decord, OpenCV, frame folders) and encode (JPEG, MPEG-4, flow)
    outputs.py    what OUT holds: resume records, manifests and lists, flow.json, the summary
    pipeline.py   prepare_dataset and prepare: all of the above, in order
"""
