"""The demo corpus' media folder: short captioned videos of moving shapes (PyAV/libx264, nothing downloaded),
a planted near-duplicate and exact copy, one broken clip, and a small PDF whose pages become OCR records.

    write_media_folder(out_dir, seed) → expectations {videos, broken, exact_copies, pdf_pages, pdf_files}

Layout (an image/video folder: file + sidecar `.txt` by stem)::

    media/clip_00.mp4 + clip_00.txt ...     moving shapes, 1.2–3 s at 8–15 fps, 64–96 px
    media/clip_copy.mp4 + clip_copy.txt     the bytes of clip_00 under another name (exact duplicate)
    media/clip_broken.mp4 + .txt            clip_01 cut in half (corrupt_video)
    media/optics.pdf                        3 pages with a text layer (ocr records, one per page)
"""
from __future__ import annotations

import io
import os

import numpy as np

from vlmloom.demo.common import seeded_rng
from vlmloom.demo.pdfs import pdf_bytes

MEDIA_DIR = "media"
SHAPES = ("square", "disc", "bar")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
DIRECTIONS = {"left to right": (1, 0), "right to left": (-1, 0), "top to bottom": (0, 1), "bottom to top": (0, -1)}
PDF_PAGES = [
    ["Chapter 3: Optics", "Light travels in straight lines", "until it meets a boundary."],
    ["3.1 Reflection", "The angle of incidence equals", "the angle of reflection."],
    ["3.2 Refraction", "Light bends when it passes", "from air into water."],
]


def _frame(size: int, shape: str, colour: tuple, centre: tuple[float, float], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = centre
    if shape == "disc":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    elif shape == "bar":
        mask = (abs(xx - cx) <= radius * 1.6) & (abs(yy - cy) <= radius // 2)
    else:
        mask = (abs(xx - cx) <= radius) & (abs(yy - cy) <= radius)
    frame = np.full((size, size, 3), 235, np.uint8)
    frame[mask] = colour
    return frame


def moving_shape_video(shape: str, colour: str, direction: str, frames: int, fps: int, size: int) -> bytes:
    """An mp4 (h264, yuv420p) of one shape crossing a light background."""
    import av

    dx, dy = DIRECTIONS[direction]
    radius = size // 8
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(frames):
            t = i / max(frames - 1, 1)
            offset = (t - 0.5) * (size - 3 * radius)
            centre = (size / 2 + dx * offset, size / 2 + dy * offset)
            image = _frame(size, shape, COLOURS[colour], centre, radius)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_media_folder(out_dir: str, seed: int, num_videos: int = 6) -> dict:
    folder = os.path.join(out_dir, MEDIA_DIR)
    os.makedirs(folder, exist_ok=True)
    rng = seeded_rng(seed, "media")
    clips = []
    for i in range(num_videos):
        shape = SHAPES[i % len(SHAPES)]
        colour = rng.choice(list(COLOURS))
        direction = rng.choice(list(DIRECTIONS))
        fps = rng.choice([8, 10, 12, 15])
        frames = rng.randint(int(1.2 * fps), 3 * fps)
        size = rng.choice([64, 80, 96])
        data = moving_shape_video(shape, colour, direction, frames, fps, size)
        caption = f"A {colour} {shape} moves from {direction} across a light grey background."
        clips.append((f"clip_{i:02d}", data, caption))
    planted = [("clip_copy", clips[0][1], clips[0][2]),  # the same bytes under another name
               ("clip_broken", clips[1][1][:len(clips[1][1]) // 2], clips[1][2])]
    for name, data, caption in clips + planted:
        with open(os.path.join(folder, f"{name}.mp4"), "wb") as fh:
            fh.write(data)
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as fh:
            fh.write(caption)
    with open(os.path.join(folder, "optics.pdf"), "wb") as fh:
        fh.write(pdf_bytes(PDF_PAGES))
    return {"videos": len(clips) + len(planted), "broken": ["clip_broken"], "exact_copies": {"clip_copy": "clip_00"},
            "pdf_files": 1, "pdf_pages": len(PDF_PAGES)}
