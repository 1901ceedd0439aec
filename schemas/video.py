"""GLM-4.1V's video arithmetic: which frames a video contributes, their resized size, patch grid, token count and the
timestamps written into the prompt — from the video's metadata alone (frame count, fps, width, height).

    (decodable frames, fps, width, height) → frame indices → (t, h, w) grid → `<|image|>` tokens per frame pair
                                                           → one integer timestamp per frame pair

Mirrors transformers 5.24 `models/glm4v/video_processing_glm4v.py` (`Glm4vVideoProcessor.sample_frames`,
`smart_resize` with `temporal_factor`, `get_num_of_video_patches`) and `processing_glm4v.py`
(`Glm4vProcessor.replace_video_token`, `replace_frame_token_id`), which cannot be imported here (torchvision).
Shared by curation (signals) and packing (rendering) without pixels, as `packing/vision.py` is for images; pure
Python so that it sits in schemas/ (packing does not import curation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class VideoSizeError(ValueError):
    """The processor would refuse this video (aspect ratio over 200:1, an empty side, no frame rate)."""


@dataclass(frozen=True, kw_only=True)
class VideoSampling:
    """Glm4vVideoProcessor's defaults; change them only together with the processor the model trains with."""
    fps: float = 2.0  # frames sampled per second of video (Glm4vVideoProcessor.fps)
    max_duration: float = 300.0  # seconds; longer videos get fps × max_duration frames spread over the whole video
    patch_size: int = 14  # vision patch side in pixels
    merge_size: int = 2  # spatial merge: merge_size² patches → one LLM token
    temporal_patch_size: int = 2  # frames per temporal patch: one grid row (and one timestamp) per frame pair
    min_pixels: int = 112 * 112  # size["shortest_edge"]
    max_pixels: int = 28 * 28 * 2 * 30000  # size["longest_edge"], compared with t × h × w of the resized video


def sample_frame_indices(total_frames: int, video_fps: float, sampling: VideoSampling = VideoSampling()) -> list[int]:
    """Indices of the frames the model sees, as `Glm4vVideoProcessor.sample_frames` picks them.

    `total_frames` is the number of frames that decode (not the container's claim); the duration is
    total_frames / video_fps, as transformers' `read_video_pyav` computes it. Duplicates are dropped and an odd
    count is made even by repeating the last index (one temporal patch holds two frames).
    """
    if total_frames <= 0:
        raise VideoSizeError("the video has no frames")
    if not video_fps or video_fps <= 0 or not math.isfinite(video_fps):
        raise VideoSizeError(f"frame rate {video_fps!r} is not positive")
    max_frame_idx = total_frames - 1
    duration = total_frames / video_fps  # > 0 here, so sample_frames' fallback for a missing duration never applies
    if duration <= sampling.max_duration:
        n = max(int(math.floor(duration * sampling.fps)), 1)
        indices = [min(max_frame_idx, int(math.ceil(i * video_fps / sampling.fps))) for i in range(n)]
    else:
        num_samples = int(sampling.max_duration * sampling.fps)
        if num_samples >= total_frames:
            indices = list(range(total_frames))
        else:
            seconds = _linspace(0.0, duration, num_samples)
            indices = [min(max_frame_idx, int(math.ceil(t * video_fps))) for t in seconds]
    unique = list(dict.fromkeys(indices))
    if len(unique) & 1:
        unique.append(unique[-1])
    return unique


def _linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace(start, stop, num, endpoint=True) to the last bit (step = span / (num - 1), last = stop)."""
    if num <= 0:
        return []
    if num == 1:
        return [start]
    step = (stop - start) / (num - 1)
    values = [start + i * step for i in range(num)]
    values[-1] = stop
    return values


def smart_resize(num_frames: int, height: int, width: int,
                 sampling: VideoSampling = VideoSampling()) -> tuple[int, int]:
    """(height, width) every sampled frame is resized to: video_processing_glm4v.smart_resize with
    temporal_factor = temporal_patch_size and factor = patch × merge."""
    temporal = sampling.temporal_patch_size
    if num_frames < temporal:
        raise VideoSizeError(f"{num_frames} frames; at least {temporal} are needed")
    return resized_sides(num_frames, height, width, factor=sampling.patch_size * sampling.merge_size,
                         temporal=temporal, min_pixels=sampling.min_pixels, max_pixels=sampling.max_pixels,
                         error=VideoSizeError, what="video")


def resized_sides(num_frames: int, height: int, width: int, *, factor: int, temporal: int, min_pixels: int,
                  max_pixels: int, error: type[ValueError] = VideoSizeError, what: str = "video") -> tuple[int, int]:
    """The GLM-4.1V processors' smart resize, for images (num_frames = temporal) and videos alike: sides rounded to
    multiples of `factor`, the (frames × height × width) volume brought within [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise error(f"{what} size {width}x{height} has an empty side")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise error(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VideoPlan:
    """What the model sees of one video: the frames, their size, the grid and one timestamp per frame pair."""
    frame_indices: tuple[int, ...]  # into the decodable frames, even count (last repeated when odd)
    resized_height: int
    resized_width: int
    grid_thw: tuple[int, int, int]  # (frame pairs, h patches, w patches): the processor's video_grid_thw row
    timestamps: tuple[int, ...]  # seconds written after each frame pair's image block (int(index / fps))
    tokens_per_frame_pair: int  # `<|image|>` tokens in one frame pair's block

    @property
    def num_tokens(self) -> int:
        """`<|image|>` tokens of the whole video (without the begin/end and timestamp tokens)."""
        return self.grid_thw[0] * self.tokens_per_frame_pair


def plan_video(total_frames: int, video_fps: float, width: int, height: int,
               sampling: VideoSampling = VideoSampling()) -> VideoPlan:
    """Frames, size, grid and timestamps of one video (raises VideoSizeError where the processor would fail)."""
    indices = sample_frame_indices(total_frames, video_fps, sampling)
    h, w = smart_resize(len(indices), height, width, sampling)
    grid_t = -(-len(indices) // sampling.temporal_patch_size)
    grid = (grid_t, h // sampling.patch_size, w // sampling.patch_size)
    tokens = grid[1] * grid[2] // sampling.merge_size ** 2
    # replace_video_token: metadata.timestamps[::2] (index / fps, one per frame pair), padded with the last
    # (0 when none) to grid_t, written as int(seconds) by replace_frame_token_id.
    stamps = [i / video_fps for i in indices][::2][:grid_t]
    while len(stamps) < grid_t:
        stamps.append(stamps[-1] if stamps else 0)
    return VideoPlan(tuple(indices), h, w, grid, tuple(int(s) for s in stamps), tokens)
