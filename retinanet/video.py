"""Video input for ``retinanet infer``: read frames with OpenCV, detect, write an annotated mp4 and JSON lines.

For ``clip.mp4`` the outputs are ``clip.mp4`` (the frames with boxes drawn, same size and frame rate,
MPEG-4 Part 2 via OpenCV's ``mp4v`` codec, which every OpenCV build can write) and ``clip.jsonl``: one
line per frame, ``{"frame": i, "time_s": t, "detections": [{"bbox": [x, y, w, h], "score", "category_id",
"name"}]}``, frames numbered from 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class VideoError(OSError):
    """A video file cannot be opened or holds no decodable frame."""


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_frames(path: Path) -> tuple[Iterator[np.ndarray], float, int]:
    """(frames as (H, W, 3) uint8 RGB, frames per second (25 when unknown), frame count (0 when unknown)).

    Raises VideoError when the file cannot be opened or its first frame cannot be decoded, before any
    output is written."""
    import cv2
    if not Path(path).is_file():
        raise VideoError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok or first is None:
        cap.release()
        raise VideoError(f"cannot read video {path}: OpenCV could not open it or decode a frame "
                         f"(corrupt file or unsupported codec?)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 0 < fps < 1000 else 25.0
    count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def frames() -> Iterator[np.ndarray]:
        frame = first
        try:
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # OpenCV decodes BGR; the model takes RGB
                ok, frame = cap.read()
                frame = frame if ok else None
        finally:
            cap.release()
    return frames(), float(fps), count


def infer_video(detector, path: Path, out_dir: Path, score_thresh: float = 0.3, batch_size: int = 2,
                name: str = "") -> tuple[int, int]:
    """Detects objects in every frame of ``path``; writes ``out_dir/<name>.mp4`` and ``.jsonl`` (``name``
    defaults to the video's stem). Returns (frames, detections). Raises VideoError for an unreadable video."""
    import cv2
    from tqdm import tqdm

    from .evaluation import to_coco_results
    from .visualize import draw_detections
    frames, fps, count = read_frames(path)
    name = name or Path(path).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    writer, n_frames, n_dets = None, 0, 0
    with open(out_dir / f"{name}.jsonl", "w") as lines, \
            tqdm(total=count or None, desc=Path(path).name, unit="frame", dynamic_ncols=True, file=sys.stderr) as bar:
        for batch in _chunks(frames, batch_size):  # frame by frame: a long video never sits in memory
            dets = detector.predict(batch, batch_size=len(batch), score_thresh=score_thresh)
            for image, det in zip(batch, dets):
                if writer is None:
                    h, w = image.shape[:2]
                    writer = cv2.VideoWriter(str(out_dir / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise VideoError(f"OpenCV cannot write {out_dir / f'{name}.mp4'} (mp4v codec missing?)")
                drawn = draw_detections(image, det["boxes"], det["names"], det["scores"], det["labels"])
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                entries = to_coco_results(n_frames, det)
                for e, label_name in zip(entries, det["names"]):
                    del e["image_id"]
                    e["name"] = label_name
                lines.write(json.dumps({"frame": n_frames, "time_s": round(n_frames / fps, 4),
                                        "detections": entries}) + "\n")
                n_frames, n_dets = n_frames + 1, n_dets + len(entries)
            bar.update(len(batch))
    if writer is not None:
        writer.release()
    return n_frames, n_dets


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Groups frames into lists of ``size`` (the last may be shorter) without reading the whole video."""
    chunk: list[np.ndarray] = []
    for f in frames:
        chunk.append(f)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
