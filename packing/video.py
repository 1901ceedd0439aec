"""A video as GLM-4.1V sees it: the token structure pack writes, and the pixels the trainer feeds the vision tower.

    VideoRef (decodable frames, fps, size) → plan (schemas/video.py) → tokens:
        <|begin_of_video|> {<|begin_of_image|> <|image|>×n <|end_of_image|> TIMESTAMP}×(frame pairs) <|end_of_video|>
    video bytes + frame indices + resized size → frames (PyAV, streaming) → pixel_values_videos rows

The token structure is `Glm4vProcessor.replace_video_token` / `replace_frame_token_id` (transformers 5.24,
processing_glm4v.py) inside the chat template's `<|begin_of_video|><|video|><|end_of_video|>`: one image block and
one integer timestamp (seconds) per frame pair. M-RoPE treats every frame pair as a (1, h, w) image block
(`Glm4vModel.get_rope_index` splits `video_grid_thw` by t), so `builder.mrope_position_ids` gives the positions
from per-frame-pair grids. Pixels: frames at the sampled indices, resized to the planned size (PIL bicubic, where
transformers uses torchvision), rescaled, normalised with the CLIP mean/std and patchified exactly as
`Glm4vVideoProcessor.patchify`. Decoding holds at most the sampled frames, already resized.
"""
from __future__ import annotations

import io

import numpy as np

from vlmloom.schemas.records import VideoRef
from vlmloom.schemas.video import VideoPlan, VideoSampling, VideoSizeError, plan_video

from . import tokenizer as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers OPENAI_CLIP_MEAN (Glm4vVideoProcessor.image_mean)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD


class VideoFramesError(ValueError):
    """The frames a plan asks for could not be decoded (fewer decode than the plan's last index, or bad bytes)."""


def plan_for(ref: VideoRef, sampling: VideoSampling = VideoSampling()) -> VideoPlan:
    """The plan of a probed video (curation/video.py filled `frame_count`, `fps`, `width`, `height`)."""
    if ref.frame_count <= 0:
        raise VideoSizeError("video not probed (frame_count 0): run curation's decode stage first")
    return plan_video(ref.frame_count, ref.fps, ref.width, ref.height, sampling)


def video_pieces(plan: VideoPlan, ids: dict[str, int], encode) -> list[tuple[np.ndarray, bool]]:
    """(token ids, is_image_block) pieces of one video, in order; `encode(text)` tokenizes a timestamp."""
    pieces: list[tuple[np.ndarray, bool]] = [(np.array([ids[T.BEGIN_OF_VIDEO]], np.int32), False)]
    for stamp in plan.timestamps:
        pieces.append((np.array([ids[T.BEGIN_OF_IMAGE]], np.int32), False))
        pieces.append((np.full(plan.tokens_per_frame_pair, ids[T.IMAGE], np.int32), True))
        pieces.append((np.array([ids[T.END_OF_IMAGE]], np.int32), False))
        pieces.append((np.asarray(encode(str(int(stamp))), np.int32), False))
    pieces.append((np.array([ids[T.END_OF_VIDEO]], np.int32), False))
    return pieces


def frame_pair_grids(video_grid_thw: np.ndarray) -> np.ndarray:
    """[v, 3] video grids → one (1, h, w) row per frame pair, as get_rope_index and get_video_features split them."""
    grids = np.asarray(video_grid_thw, np.int64).reshape(-1, 3)
    rows = np.repeat(grids, grids[:, 0], axis=0)
    rows[:, 0] = 1
    return rows


def decode_frames(data: bytes, indices: list[int], height: int, width: int, *,
                  max_bytes: int = 512 * 2**20) -> np.ndarray:
    """uint8 [len(indices), height, width, 3]: the frames at `indices` (ascending, repeats allowed), resized.

    One pass over the stream; only the wanted frames are converted and kept, already at their final size, so
    memory is len(indices) × height × width × 3 bytes (refused above `max_bytes`)."""
    import av
    from PIL import Image

    if len(indices) * height * width * 3 > max_bytes:
        raise VideoFramesError(f"{len(indices)} frames of {width}x{height} exceed {max_bytes} bytes")
    wanted = sorted(set(indices))
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            at = 0
            for i, frame in enumerate(container.decode(stream)):
                if i == wanted[at]:
                    image = frame.to_image().convert("RGB")
                    frames[i] = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), np.uint8)
                    at += 1
                    if at == len(wanted):
                        break
    except Exception as exc:  # damaged tails: the frames that decoded are kept, a missing one is reported below
        if len(frames) < len(wanted):
            raise VideoFramesError(f"decoding stopped after {len(frames)} of {len(wanted)} frames: {exc}") from None
    if len(frames) < len(wanted):
        raise VideoFramesError(f"only {len(frames)} of the {len(wanted)} sampled frames decode "
                               f"(last index {wanted[-1]})")
    return np.stack([frames[i] for i in indices])


def patchify(frames: np.ndarray, sampling: VideoSampling = VideoSampling(), *, normalize: bool = True) -> np.ndarray:
    """[n, H, W, 3] uint8 frames of one video → float32 [t·h·w, 3·T·P·P] rows, `Glm4vVideoProcessor.patchify`'s
    layout (after its rescale/normalise when `normalize`); an odd n repeats the last frame."""
    video = frames.astype(np.float32).transpose(0, 3, 1, 2)  # n, C, H, W
    if normalize:
        mean = np.asarray(CLIP_MEAN, np.float32)[None, :, None, None]
        std = np.asarray(CLIP_STD, np.float32)[None, :, None, None]
        video = (video * np.float32(1 / 255.0) - mean) / std
    t_patch, p, m = sampling.temporal_patch_size, sampling.patch_size, sampling.merge_size
    if pad := -video.shape[0] % t_patch:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    n, c, height, width = video.shape
    gt, gh, gw = n // t_patch, height // p, width // p
    patches = video.reshape(gt, t_patch, c, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches.reshape(gt * gh * gw, c * t_patch * p * p), dtype=np.float32)


def video_pixel_values(data: bytes, indices: list[int], grid_thw, sampling: VideoSampling = VideoSampling(), *,
                       max_bytes: int = 512 * 2**20) -> np.ndarray:
    """One packed video (bytes, its sampled frame indices, its (t, h, w) grid) → its pixel_values_videos rows."""
    _, gh, gw = (int(x) for x in grid_thw)
    frames = decode_frames(data, list(indices), gh * sampling.patch_size, gw * sampling.patch_size,
                           max_bytes=max_bytes)
    return patchify(frames, sampling)


def build_video_sample(builder, sample):
    """A `video` sample → BuiltSample: [gMASK]<sop> VIDEO… caption <|endoftext|>, loss on the caption and the final
    <|endoftext|> (pre-training form; the frames and timestamps are context, -100). Raises the builder's reject."""
    from .builder import _Reject, _Sequence

    if sample.images:
        raise _Reject("image_placeholder_mismatch", "a video sample carries no images (put them in their own sample)")
    if not sample.videos:
        raise _Reject("missing_video", "video sample without a video")
    sampling = builder.config.video
    seq = _Sequence(builder, sample)
    seq.special(T.GMASK)
    seq.special(T.SOP)
    grids, indices, payloads = [], [], []
    for i, ref in enumerate(sample.videos):
        data = ref.load_bytes()
        if not data:
            raise _Reject("missing_video_bytes", f"video {i} has no bytes")
        try:
            plan = plan_for(ref, sampling)
        except VideoSizeError as exc:
            raise _Reject("video_size_unsupported", f"video {i}: {exc}") from None
        for ids, is_image in video_pieces(plan, builder.ids, builder.encode):
            seq.pieces.append(ids)
            seq.trained.append(False)
        seq.grids += [(1, plan.grid_thw[1], plan.grid_thw[2])] * plan.grid_thw[0]  # M-RoPE: one block per pair
        grids.append(plan.grid_thw)
        indices += plan.frame_indices
        payloads.append(data)
    text = sample.training_text()
    if not text:
        raise _Reject("empty_text", "video sample without training text")
    seq.text(text, trained=True)
    seq.special(T.ENDOFTEXT, trained=True)
    built = seq.finish()  # positions from the per-frame-pair grids in token order
    built.image_grid_thw = np.zeros((0, 3), np.int32)
    built.video_grid_thw = np.asarray(grids, np.int32).reshape(-1, 3)
    built.video_frame_indices = np.asarray(indices, np.int32)
    built.videos = payloads
    if built.num_label_tokens == 0:
        raise _Reject("no_label_tokens", "nothing to train on")
    return built
