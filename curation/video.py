"""Video probing and validation with PyAV: encoded video bytes → `VideoRef` (what decodes) or one reason code.

    bytes → probe (container, stream, codec, size, frame rate, claimed duration/frames)
          → count the frames that decode (streaming: one frame alive at a time, stopped at the caps)
          → VideoRef(sha256, duration, fps, width, height, codec, frame_count) | VideoRejected(reason, detail)

Reasons, one each: `corrupt_video` (not a container, no frame rate, nothing decodes), `no_video_stream` (audio
only, ...), `unsupported_codec`, `too_short`, `too_long` (duration or frame count over the caps), `too_large`
(encoded bytes or frame pixels over the caps), and, when their thresholds are set, `static_video` (too little
change between frames) and `uniform_video` (frames of one flat colour). Nothing here raises on input bytes: a
hostile file (truncated, zero fps, 1×1, 100k frames, audio only) becomes a rejection or, where FFmpeg repairs it
(a zero frame rate in an AVI header is timed at 25 fps), a sample; decoding stops at `max_frames`.

`frame_count` is the number of frames that decode, not the container's claim (they can disagree: a real .mov
stated 87 and decoded 82); GLM-4.1V's frame sampling (schemas/video.py) runs on it, so pack never asks for a frame
that does not exist. Reader hooks (readers.py calls them): `video_members` (tar/folder records),
`video_refs_from_row` (manifest `video_path`/`video_bytes`), `video_sample_from_bytes` (one bare video); the decode
stage calls `validate_video_sample`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

from vlmloom.curation.hashing import sha256_hex
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Sample, VideoRef, make_key
from vlmloom.schemas.video import VideoSampling, VideoSizeError, plan_video

STAGE = "decode"
VIDEO_EXTENSIONS = ("mp4", "webm", "mov", "mkv", "avi")
REASONS = ("corrupt_video", "no_video_stream", "unsupported_codec", "too_short", "too_long", "too_large",
           "static_video", "uniform_video")
# FFmpeg decoder names seen in web/video corpora; others (raw formats, screen codecs, ...) are refused:
# parsing rare codecs from untrusted bytes buys risk, not data.
DEFAULT_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "theora",
                  "prores", "msmpeg4v3", "h263")


@dataclass(frozen=True, kw_only=True)
class VideoConfig:
    """Limits for video records (job YAML section `decode.video`)."""
    min_duration: float = 0.5  # seconds of decodable video (frames / fps); shorter → too_short
    max_duration: float = 3600.0  # seconds; longer (claimed or decoded) → too_long
    max_frames: int = 200_000  # decodable frames counted at most; more → too_long (bounds the counting pass)
    max_bytes: int = 2 * 2**30  # encoded bytes; larger → too_large
    max_frame_pixels: int = 3840 * 2160  # width × height of a frame; larger → too_large (checked before decoding)
    codecs: tuple[str, ...] = DEFAULT_CODECS  # FFmpeg decoder names accepted; others → unsupported_codec
    # Bytes of RGB frames one video may hold at once when its sampled frames are extracted (pack/train):
    # the sampled frames, resized, must fit, else → too_large. Counting never holds more than one frame.
    max_decoded_bytes: int = 512 * 2**20
    sampling: VideoSampling = field(default_factory=VideoSampling)  # GLM-4.1V frame sampling (for the budget above)
    # Content rules on 16×16 grey thumbnails of the frames GLM's sampling rate would see (one per 1/sampling.fps s):
    min_motion: float = -1.0  # mean grey-level change (0-255) between those frames; below → static_video; -1 off
    min_pixel_std: float = -1.0  # mean grey-level standard deviation of a frame; below → uniform_video; -1 disables

    def validate(self) -> None:
        if not 0 <= self.min_duration <= self.max_duration:
            raise ConfigError(f"need 0 <= min_duration ({self.min_duration}) <= max_duration "
                              f"({self.max_duration}); the defaults are 0.5 and 3600")
        for name in ("max_frames", "max_bytes", "max_frame_pixels", "max_decoded_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be >= 1")
        if not self.codecs:
            raise ConfigError("codecs is empty: list the FFmpeg decoder names to accept (e.g. [h264, vp9])")


class VideoRejected(Exception):
    """A video refused with one reason code (REASONS) and a detail for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def probe_video(data: bytes, config: VideoConfig = VideoConfig(), uri: str | None = None) -> VideoRef:
    """Encoded video → VideoRef of what decodes (frames counted); raises VideoRejected, nothing else."""
    return probe_video_signals(data, config, uri)[0]


def probe_video_signals(data: bytes, config: VideoConfig = VideoConfig(),
                        uri: str | None = None) -> tuple[VideoRef, dict[str, float]]:
    """`probe_video`, with the content measures (`video_motion`, `video_pixel_std`) taken on the way."""
    if len(data) > config.max_bytes:
        raise VideoRejected("too_large", f"{len(data)} bytes > decode.video.max_bytes {config.max_bytes}")
    try:
        return _probe(data, config, uri)
    except VideoRejected:
        raise
    except Exception as exc:  # FFmpeg/PyAV errors on hostile bytes have many types; each is this record's fault
        raise VideoRejected("corrupt_video", f"{type(exc).__name__}: {exc}"[:300]) from None


def _probe(data: bytes, config: VideoConfig, uri: str | None) -> tuple[VideoRef, dict[str, float]]:
    import av

    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoRejected("no_video_stream", f"streams: {', '.join(kinds)}")
        stream = container.streams.video[0]
        codec = stream.codec_context.name or ""
        if codec not in config.codecs:
            raise VideoRejected("unsupported_codec", f"codec {codec!r} not in decode.video.codecs")
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:
            raise VideoRejected("corrupt_video", f"frame size {width}x{height}")
        if width * height > config.max_frame_pixels:
            raise VideoRejected("too_large", f"frame {width}x{height} > decode.video.max_frame_pixels "
                                             f"{config.max_frame_pixels}")
        # transformers' read_video_pyav takes the stream's average_rate; a stream without one cannot be timed.
        rate = stream.average_rate
        fps = float(rate) if rate else 0.0
        if not fps > 0 or not math.isfinite(fps):
            raise VideoRejected("corrupt_video", f"no frame rate (average_rate {rate})")
        claimed = _claimed_duration(container, stream)
        if claimed > config.max_duration:
            raise VideoRejected("too_long", f"container says {claimed:.1f} s > decode.video.max_duration "
                                            f"{config.max_duration}")
        frames, error, motion, pixel_std = _count_decodable(container, stream, config, fps)
        fmt = _member_format(uri, container.format.name)
        claimed_frames = int(stream.frames or 0)  # read while the container is open (PyAV >= 18.1.1 checks it)
    if frames == 0:
        raise VideoRejected("corrupt_video", f"no frame decodes{': ' + error if error else ''}")
    duration = frames / fps
    if duration < config.min_duration:
        raise VideoRejected("too_short", f"{frames} frames at {fps:g} fps = {duration:.3f} s "
                                         f"< decode.video.min_duration {config.min_duration}")
    if motion < config.min_motion:
        raise VideoRejected("static_video", f"motion {motion:.2f} < decode.video.min_motion {config.min_motion}")
    if pixel_std < config.min_pixel_std:
        raise VideoRejected("uniform_video", f"pixel std {pixel_std:.2f} < decode.video.min_pixel_std "
                                             f"{config.min_pixel_std}")
    try:
        plan = plan_video(frames, fps, width, height, config.sampling)
    except VideoSizeError as exc:
        raise VideoRejected("corrupt_video", str(exc)) from None
    held = len(plan.frame_indices) * plan.resized_height * plan.resized_width * 3
    if held > config.max_decoded_bytes:
        raise VideoRejected("too_large", f"{len(plan.frame_indices)} sampled frames of {plan.resized_width}x"
                                         f"{plan.resized_height} need {held} bytes > decode.video.max_decoded_bytes")
    return VideoRef(sha256=sha256_hex(data), uri=uri, bytes=data, format=fmt, duration=duration, fps=fps, width=width,
                    height=height, codec=codec, frame_count=frames, claimed_frames=claimed_frames,
                    decode_error=error), {"video_motion": round(motion, 4), "video_pixel_std": round(pixel_std, 4)}


def _member_format(uri: str | None, demuxer: str) -> str:
    """The shard member extension: the input's own when it is a video one, else from FFmpeg's demuxer name."""
    suffix = (uri or "").rsplit(".", 1)[-1].lower() if uri and "." in uri.rsplit("/", 1)[-1] else ""
    if suffix in VIDEO_EXTENSIONS:
        return suffix
    names = demuxer.split(",")
    return {"matroska": "mkv", "webm": "webm", "avi": "avi"}.get(names[0], "mp4" if "mp4" in names else names[0])


def _claimed_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return 0.0


def _count_decodable(container, stream, config: VideoConfig, fps: float) -> tuple[int, str, float, float]:
    """(frames that decode, the error that ended decoding or "", motion, pixel std). One frame alive at a time;
    stops past the caps. Motion and std are measured on 16×16 grey thumbnails every 1/sampling.fps seconds."""
    import numpy as np

    limit = min(config.max_frames, int(config.max_duration * fps) + 1)
    step = max(1, round(fps / config.sampling.fps))
    frames, previous, diffs, stds, error = 0, None, [], [], ""
    try:
        for frame in container.decode(stream):
            if frames % step == 0:
                thumb = frame.reformat(width=16, height=16, format="gray").to_ndarray().astype(np.float32)
                stds.append(float(thumb.std()))
                if previous is not None:
                    diffs.append(float(np.abs(thumb - previous).mean()))
                previous = thumb
            frames += 1
            if frames > limit:
                raise VideoRejected("too_long", f"more than {limit} frames decode (decode.video.max_frames "
                                                f"{config.max_frames}, decode.video.max_duration "
                                                f"{config.max_duration} s at {fps:g} fps)")
    except VideoRejected:
        raise
    except Exception as exc:  # a truncated or damaged tail: keep the frames before it (sampled from what decodes)
        error = f"{type(exc).__name__}: {exc}"[:200]
    motion = sum(diffs) / len(diffs) if diffs else 0.0
    return frames, error, motion, (sum(stds) / len(stds) if stds else 0.0)


def video_signals(ref: VideoRef) -> dict[str, Any]:
    """The measured values decode records on a video sample (schemas/signals.py declares them)."""
    return {"video_duration": round(ref.duration, 6), "video_fps": round(ref.fps, 6), "width": ref.width,
            "height": ref.height, "video_frames": ref.frame_count, "video_codec": ref.codec}


def video_sample_from_bytes(source: str, source_id: str, data: bytes, *, uri: str | None = None,
                            text: str | None = None, meta: dict[str, Any] | None = None,
                            kind: str = "video") -> Sample:
    """One video (file, tar member or manifest `video_path`/`video_bytes`) → an unprobed `video` Sample.

    Reading only wraps the bytes (sha256 and metadata come from the decode stage's `validate_video_sample`),
    so a reader never decodes video and never fails on its bytes."""
    return Sample(key=make_key(source, source_id), source=source, source_id=source_id, kind=kind,
                  videos=[VideoRef(bytes=data, uri=uri)], text=text, meta=dict(meta or {}))


def validate_video_sample(sample: Sample, config: VideoConfig = VideoConfig()) -> tuple[str | None, str, dict]:
    """Decode-stage judgment for a sample with videos: probe each (filling its VideoRef in place).
    Returns (reason or None, detail, signals of video 0)."""
    if not sample.videos:
        return "no_video_stream", "a video sample without a video", {}
    for i, ref in enumerate(sample.videos):
        if ref.nbytes > config.max_bytes:  # before reading a spanned file
            return "too_large", f"video {i}: {ref.nbytes} bytes > decode.video.max_bytes {config.max_bytes}", {}
        try:
            data = ref.load_bytes()
        except OSError as exc:  # the input file vanished, shrank or changed since it was read (as for images)
            return "read_error", f"video {i}: {type(exc).__name__}: {exc}", {}
        if not data:
            return "corrupt_video", f"video {i} has no bytes", {}
        try:
            probed, measured = probe_video_signals(data, config, ref.uri)
        except VideoRejected as exc:
            return exc.reason, f"video {i}: {exc.detail}", {}
        probed.span = ref.span  # the same bytes still lie there: the shuffles may drop them again
        if ref.format and not probed.format:
            probed.format = ref.format
        sample.videos[i] = probed
        if i == 0:
            content = measured
    return None, "", {**video_signals(sample.videos[0]), **content}


# --- reader hooks (curation/readers.py calls these; the lead re-homes them in the readers registry) -------------
def video_members(files: dict[str, bytes], uri_of, spans: dict[str, tuple[str, int, int]]) -> list[VideoRef]:
    """The video members of a tar/folder record (`mp4`, `1.webm`, ...: index 0 when unnumbered), in index order,
    as unprobed VideoRefs (bytes, where they were read, their span in a local file)."""
    found = []
    for ext, data in files.items():
        parts = ext.split(".")
        if parts[-1] not in VIDEO_EXTENSIONS or len(parts) > 2 or (len(parts) == 2 and not parts[0].isdigit()):
            continue
        found.append((int(parts[0]) if len(parts) == 2 else 0, ext, data))
    return [VideoRef(bytes=data, uri=uri_of(ext), span=spans.get(ext), format=ext.rsplit(".", 1)[-1])
            for _, ext, data in sorted(found, key=lambda f: (f[0], f[1]))]


def video_refs_from_row(row: dict[str, Any], where: str, open_relative, image_root: str = "") -> list[VideoRef]:
    """A manifest row's `video_bytes` (bytes) or `video_path` (relative to the manifest, the same rules as
    `image_path`) → [VideoRef] ([] when neither). Raises readers.InvalidRecord: `invalid_field`,
    `unsafe_video_path`, `missing_video_file`."""
    from vlmloom.curation.readers import InvalidRecord, check_relative_path

    data, path = row.get("video_bytes"), row.get("video_path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidRecord("invalid_field", f"{where}: field 'video_bytes' is {type(data).__name__}, "
                                                 "expected bytes")
        return [VideoRef(bytes=bytes(data), uri=where)]
    if path is None or path == "":
        return []
    if not isinstance(path, str):
        raise InvalidRecord("invalid_field", f"{where}: field 'video_path' is {type(path).__name__}, expected a string")
    why = check_relative_path(path, image_root)
    if why:
        raise InvalidRecord("unsafe_video_path", f"{where}: video_path {path!r} {why}")
    try:
        data = open_relative(path)
    except InvalidRecord as exc:  # the opener's own checks (symlinks out of the folder) name images
        raise InvalidRecord("unsafe_video_path", exc.detail) from None
    except (OSError, ValueError) as exc:
        raise InvalidRecord("missing_video_file", f"{where}: {path}: {type(exc).__name__}: {exc}") from None
    return [VideoRef(bytes=data, uri=path)]


def frame_strip(data: bytes, frames: int = 4, height: int = 72, max_decoded: int = 2000) -> bytes | None:
    """A JPEG of `frames` evenly spaced frames side by side (each `height` px high), for people reading a report;
    None when the clip does not decode. Decodes at most `max_decoded` frames, one held at a time."""
    import av
    from PIL import Image

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            total = stream.frames or 0
            wanted = {round(i * (total - 1) / max(frames - 1, 1)) for i in range(frames)} if total > 1 else {0}
            picked = []
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    # a copy of the pixels: PyAV may reuse a frame's buffer for the next decoded frame
                    image = Image.fromarray(frame.to_ndarray(format="rgb24").copy())
                    image.thumbnail((height * 4, height))
                    picked.append(image)
                if len(picked) >= len(wanted) or index + 1 >= max_decoded:
                    break
    except Exception:  # noqa: BLE001 - a report shows no strip for a clip that does not decode; curate judged it
        return None
    if not picked:
        return None
    strip = Image.new("RGB", (sum(i.width for i in picked) + 2 * (len(picked) - 1), height), (255, 255, 255))
    x = 0
    for image in picked:
        strip.paste(image, (x, 0))
        x += image.width + 2
    out = io.BytesIO()
    strip.save(out, "JPEG", quality=80)
    return out.getvalue()
