"""Video: probing and reasons (curation/video.py), GLM-4.1V frame sampling / sizes / timestamps (schemas/video.py),
frames and patches (packing/video.py), against transformers' own code where it runs without torchvision.

Oracles (transformers 5.24):
- `models/glm4v/video_processing_glm4v.py`: `Glm4vVideoProcessor.sample_frames` (called with a stub self: it reads
  only `fps` and `max_duration`), `smart_resize`, and the processor itself with resize/rescale/normalize off
  (its `sample_frames` + `patchify`, pure torch) on our resized frames;
- `models/glm4v/processing_glm4v.py`: `Glm4vProcessor.replace_video_token` (stub self) for the frame structure and
  timestamps written into the prompt;
- `video_utils.read_video_pyav` for the duration it derives (frames / fps).
The hand-written cases below were worked out from `sample_frames` line by line (comments give the arithmetic).
"""
import io
import types

import numpy as np
import pytest

av = pytest.importorskip("av")

from vlmloom.curation.video import VideoConfig, VideoRejected, probe_video, validate_video_sample, \
    video_sample_from_bytes
from vlmloom.packing.video import decode_frames, patchify
from vlmloom.schemas.video import VideoSampling, plan_video, sample_frame_indices, smart_resize


def make_video(n: int, width: int = 32, height: int = 32, fps=10, codec: str = "libx264", fmt: str = "mp4",
               audio: bool = False) -> bytes:
    """n frames; frame i is flat grey (i * 8) % 256 (its index can be read back from the pixels)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        if n:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # one encoder thread: x264's frame threads made the same call give other bytes now and then (3 digests in
            # 60 calls here), and tests compare the content digests of clips made twice
            stream.codec_context.thread_count = 1
        if audio:
            astream = container.add_stream("aac", rate=8000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), (i * 8) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        if n:
            for packet in stream.encode():
                container.mux(packet)
        if audio:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
            samples.sample_rate = 8000
            for packet in astream.encode(samples):
                container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return buf.getvalue()


def frame_number(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 8))


# --- sampling, sizes, timestamps ----------------------------------------------------------------------------------
HAND_CASES = [
    # (frames, fps, expected indices)
    # 41 frames @ 20 fps: duration 2.05 s ≤ 300; n = floor(2.05·2) = 4; ceil(i·20/2) = 0, 10, 20, 30
    (41, 20.0, [0, 10, 20, 30]),
    # 25 @ 10: 2.5 s, n = 5 → 0, 5, 10, 15, 20; odd → the last repeated
    (25, 10.0, [0, 5, 10, 15, 20, 20]),
    # 3 @ 30: 0.1 s, n = max(floor(0.2), 1) = 1 → [0], odd → [0, 0]
    (3, 30.0, [0, 0]),
    # 7 @ 1.5: 4.67 s, n = 9, ceil(i·0.75) = 0,1,2,3,3,4,5,6,6 → min(6, ·); unique 0..6 (7, odd) → 6 repeated
    (7, 1.5, [0, 1, 2, 3, 4, 5, 6, 6]),
    # 5 @ 2 (fps equal to the sampling rate): 2.5 s, n = 5 → 0..4, odd → 4 repeated
    (5, 2.0, [0, 1, 2, 3, 4, 4]),
]


@pytest.mark.parametrize("frames,fps,expected", HAND_CASES)
def test_sample_frame_indices_hand_cases(frames, fps, expected):
    assert sample_frame_indices(frames, fps) == expected


def test_no_frames_or_no_frame_rate_is_refused_not_divided_by():
    from vlmloom.schemas.video import VideoSizeError

    for total, fps in [(0, 10.0), (10, 0.0), (10, float("nan"))]:
        with pytest.raises(VideoSizeError):
            sample_frame_indices(total, fps)


def test_past_the_duration_cap_spreads_fps_x_cap_frames():
    # max_duration 3 s at 2 fps → 6 samples over 8 s @ 4 fps (32 frames): linspace(0, 8, 6) = 0, 1.6, 3.2, 4.8, 6.4,
    # 8 → ceil(t·4) = 0, 7, 13, 20, 26, 32 → min(31, ·)
    sampling = VideoSampling(max_duration=3)
    assert sample_frame_indices(32, 4.0, sampling) == [0, 7, 13, 20, 26, 31]
    # fewer frames than fps × cap: every frame (5 frames over 10 s, cap 3 s → 6 samples ≥ 5 frames), odd → repeat
    assert sample_frame_indices(5, 0.5, sampling) == [0, 1, 2, 3, 4, 4]


def _reference_sample_frames(total, fps, sampling):
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
    from transformers.video_utils import VideoMetadata

    stub = types.SimpleNamespace(fps=sampling.fps, max_duration=sampling.max_duration)
    # read_video_pyav's metadata: duration = total frames / fps
    return Glm4vVideoProcessor.sample_frames(stub, VideoMetadata(total_num_frames=total, fps=fps,
                                                                 duration=total / fps)).tolist()


SWEEP = [(total, fps, max_duration) for total in (1, 2, 3, 9, 24, 25, 61, 121, 500)
         for fps in (1.0, 2.0, 7.5, 23.976023976023978, 29.97002997002997, 60.0) for max_duration in (300, 4)]


def test_sample_frame_indices_equal_transformers_over_a_sweep():
    mismatches = []
    for total, fps, max_duration in SWEEP:
        sampling = VideoSampling(max_duration=max_duration)
        ours, ref = sample_frame_indices(total, fps, sampling), _reference_sample_frames(total, fps, sampling)
        if ours != ref:
            mismatches.append((total, fps, max_duration, ours, ref))
    assert mismatches == []
    assert len(SWEEP) == 108


def test_smart_resize_equals_transformers():
    from transformers.models.glm4v.video_processing_glm4v import smart_resize as reference

    s = VideoSampling()
    cases = [(n, h, w) for n in (2, 4, 6, 600) for h, w in [(1, 1), (32, 32), (48, 64), (27, 500), (720, 1280),
                                                              (1080, 1920), (2160, 3840), (28, 56)]]
    for n, h, w in cases:
        expected = reference(n, h, w, temporal_factor=2, factor=28, min_pixels=s.min_pixels, max_pixels=s.max_pixels)
        assert smart_resize(n, h, w, s) == expected, (n, h, w)
    # a small max_pixels takes the shrinking branch
    small = VideoSampling(max_pixels=28 * 28 * 2 * 4)
    assert smart_resize(4, 200, 300, small) == reference(4, 200, 300, temporal_factor=2, factor=28,
                                                        min_pixels=small.min_pixels, max_pixels=small.max_pixels)


def _reference_structure(indices, fps, grid):
    """Glm4vProcessor.replace_video_token on the metadata its video processor returns."""
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor
    from transformers.video_utils import VideoMetadata

    stub = types.SimpleNamespace(video_processor=types.SimpleNamespace(merge_size=2), image_token="<|image|>")
    stub.replace_frame_token_id = types.MethodType(Glm4vProcessor.replace_frame_token_id, stub)
    meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=fps, frames_indices=list(indices))
    import torch
    return Glm4vProcessor.replace_video_token(stub, {"video_grid_thw": torch.tensor([grid]),
                                                     "video_metadata": [meta]}, 0)


def test_plan_grid_tokens_and_timestamps_equal_the_processor():
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor

    processor = Glm4vVideoProcessor()
    for total, fps, width, height in [(41, 20.0, 32, 32), (25, 10.0, 64, 48), (600, 30.0, 1280, 720),
                                      (7, 1.5, 1, 1), (2000, 4.0, 320, 240), (121, 29.97002997002997, 50, 90)]:
        plan = plan_video(total, fps, width, height)
        n = len(plan.frame_indices)
        assert plan.grid_thw[0] * plan.grid_thw[1] * plan.grid_thw[2] == processor.get_num_of_video_patches(
            n, height, width)
        structure = "".join(f"<|begin_of_image|>{'<|image|>' * plan.tokens_per_frame_pair}<|end_of_image|>{t}"
                            for t in plan.timestamps)
        assert structure == _reference_structure(plan.frame_indices, fps, plan.grid_thw), (total, fps)
    # timestamps: one per frame pair, int(index / fps) of the pair's first frame
    assert plan_video(41, 20.0, 32, 32).timestamps == (0, 1)  # indices 0, 10 | 20, 30 → 0/20, 20/20
    assert plan_video(7, 1.5, 32, 32).timestamps == (0, 1, 2, 4)  # 0, 2, 4, 6 / 1.5 → 0, 1.33, 2.67, 4


# --- probing ------------------------------------------------------------------------------------------------------
def test_probe_reads_what_decodes():
    data = make_video(41, 32, 48, fps=20)
    ref = probe_video(data, uri="clips/a.mp4")
    assert (ref.frame_count, ref.fps, ref.width, ref.height, ref.codec, ref.format) == (41, 20.0, 32, 48, "h264", "mp4")
    assert ref.duration == pytest.approx(41 / 20)
    assert len(ref.sha256) == 64 and ref.bytes == data


def test_frame_count_metadata_that_disagrees_with_what_decodes():
    """An AVI cut short (its index and last frames gone) still claims 40 frames in its header; sampling runs on
    the frames that decode."""
    full = make_video(40, 32, 32, fps=10, codec="mpeg4", fmt="avi")
    cut = full[: full.find(b"idx1") - 300]
    ref = probe_video(cut)
    assert ref.claimed_frames == 40
    assert 0 < ref.frame_count < 40
    plan = plan_video(ref.frame_count, ref.fps, ref.width, ref.height)
    assert max(plan.frame_indices) < ref.frame_count
    frames = decode_frames(cut, list(plan.frame_indices), 28, 28)
    assert [frame_number(f) for f in frames] == list(plan.frame_indices)


@pytest.mark.parametrize("name,data,config,reason", [
    ("not a video", b"\x00garbage" * 100, VideoConfig(), "corrupt_video"),
    ("mp4 cut before its index", None, VideoConfig(), "corrupt_video"),
    ("audio only", "audio", VideoConfig(), "no_video_stream"),
    ("codec not accepted", None, VideoConfig(codecs=("vp9",)), "unsupported_codec"),
    ("too short", None, VideoConfig(min_duration=5.0), "too_short"),
    ("too long", None, VideoConfig(max_duration=1.0), "too_long"),
    ("too many frames", None, VideoConfig(max_frames=10), "too_long"),
    ("too many bytes", None, VideoConfig(max_bytes=100), "too_large"),
    ("frame too large", None, VideoConfig(max_frame_pixels=500), "too_large"),
    ("sampled frames over the memory cap", None, VideoConfig(max_decoded_bytes=1000), "too_large"),
])
def test_each_reason(name, data, config, reason):
    good = make_video(20, 32, 32, fps=10)
    if data is None:
        data = good[: len(good) // 2] if "cut" in name else good
    elif data == "audio":
        data = make_video(0, audio=True, fmt="mp4")
    with pytest.raises(VideoRejected) as exc:
        probe_video(data, config)
    assert exc.value.reason == reason, exc.value.detail


def test_hostile_videos_never_raise_out_of_validation():
    zero_fps = bytearray(make_video(10, 32, 32, fps=10, codec="mpeg4", fmt="avi"))
    # the AVI stream header's scale and rate (dwScale, dwRate at 'strh' + 8 + 20) and the main header's
    # microseconds per frame → 0: FFmpeg then times the stream at its default 25 fps (measured), which we keep
    at = bytes(zero_fps).find(b"strh") + 8 + 20
    zero_fps[at:at + 8] = bytes(8)
    at = bytes(zero_fps).find(b"avih") + 8
    zero_fps[at:at + 4] = bytes(4)
    hostile = {
        "truncated": make_video(20)[:300],
        "zero fps": bytes(zero_fps),
        "1x1": make_video(20, 1, 1, codec="mpeg4", fmt="avi"),
        "many frames": make_video(300, 16, 16, fps=1000),
        "audio only": make_video(0, audio=True),
        "empty": b"",
    }
    outcomes = {}
    for name, data in hostile.items():
        sample = video_sample_from_bytes("src", name, data, uri=f"{name}.mp4", text="a clip")
        reason, detail, signals = validate_video_sample(sample, VideoConfig(max_frames=100, min_duration=0.1))
        outcomes[name] = reason
        if name == "zero fps":
            assert sample.videos[0].fps == 25.0
        if name == "1x1":  # kept: smart_resize scales it to 28×28, then up to min_pixels over 4 frames: 56×56
            ref = sample.videos[0]
            plan = plan_video(ref.frame_count, ref.fps, ref.width, ref.height)
            assert (ref.width, ref.height, plan.resized_height, plan.resized_width) == (1, 1, 56, 56)
            assert decode_frames(ref.bytes, list(plan.frame_indices), 56, 56).shape == (4, 56, 56, 3)
    assert outcomes == {"truncated": "corrupt_video", "zero fps": None, "1x1": None,
                        "many frames": "too_long", "audio only": "no_video_stream", "empty": "corrupt_video"}


def test_motion_and_uniformity_signals_and_their_rules():
    # frame i is flat grey 8·i; at 10 fps GLM samples every 5th frame: 40 grey levels apart, flat frames
    sample = video_sample_from_bytes("src", "moving", make_video(20, 32, 32, fps=10))
    reason, _, signals = validate_video_sample(sample)
    assert reason is None
    assert signals["video_motion"] == pytest.approx(40, abs=1.5)
    assert signals["video_pixel_std"] < 1.0
    assert validate_video_sample(sample, VideoConfig(min_pixel_std=5.0))[0] == "uniform_video"
    assert validate_video_sample(sample, VideoConfig(min_motion=50.0))[0] == "static_video"
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:  # one textured frame held still for 2 s
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    still = video_sample_from_bytes("src", "still", buf.getvalue())
    reason, detail, signals = validate_video_sample(still, VideoConfig(min_motion=2.0, min_pixel_std=5.0))
    assert reason == "static_video" and signals == {}, detail


def test_spanned_video_read_at_decode_and_a_changed_file_is_a_read_error(tmp_path):
    data = make_video(10, 32, 32, fps=5)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"head" + data)
    sample = video_sample_from_bytes("src", "spanned", data, uri=str(path))
    sample.videos[0].bytes, sample.videos[0].span = None, (str(path), 4, len(data))
    assert validate_video_sample(sample)[0] is None and sample.videos[0].sha256
    assert sample.videos[0].span == (str(path), 4, len(data))  # still spanned: release_bytes may drop the bytes
    sample.videos[0].bytes = None
    path.write_bytes(b"head" + data[:-1] + b"x")  # changed after validation: load_bytes refuses it
    with pytest.raises(OSError):
        sample.videos[0].load_bytes()
    fresh = video_sample_from_bytes("src", "gone", data)
    fresh.videos[0].bytes, fresh.videos[0].span = None, (str(tmp_path / "missing.mp4"), 0, len(data))
    assert validate_video_sample(fresh)[0] == "read_error"


# --- frames and patches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames,fps,width,height", [(41, 20, 32, 32), (25, 10, 64, 48), (9, 3, 48, 64)])
def test_frames_and_patches_equal_the_processor(frames, fps, width, height):
    """Our decode + patchify against Glm4vVideoProcessor given every decodable frame (resized by us; its resize
    needs torchvision): it picks frames with its own sample_frames and patchifies them; 0 differing values."""
    import torch
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
    from transformers.video_utils import VideoMetadata

    data = make_video(frames, width, height, fps=fps)
    ref = probe_video(data)
    plan = plan_video(ref.frame_count, ref.fps, ref.width, ref.height)
    ours_frames = decode_frames(data, list(plan.frame_indices), plan.resized_height, plan.resized_width)
    assert [frame_number(f) for f in ours_frames] == list(plan.frame_indices)
    ours = patchify(ours_frames, normalize=False)
    every = decode_frames(data, list(range(ref.frame_count)), plan.resized_height, plan.resized_width)
    out = Glm4vVideoProcessor()(videos=[every], video_metadata=[VideoMetadata(
        total_num_frames=ref.frame_count, fps=ref.fps, duration=ref.frame_count / ref.fps)], return_tensors="pt",
        return_metadata=True, do_convert_rgb=False, do_resize=False, do_rescale=False, do_normalize=False)
    assert out["video_metadata"][0].frames_indices.tolist() == list(plan.frame_indices)
    assert out["video_grid_thw"].tolist() == [list(plan.grid_thw)]
    assert np.array_equal(ours, out["pixel_values_videos"].to(torch.float32).numpy())
    # normalisation: (x / 255 - mean) / std per channel, as its rescale_and_normalize
    normed = patchify(ours_frames)
    assert normed.shape == ours.shape and abs(float(normed[0, 0]) - (float(ours[0, 0]) / 255 - 0.48145466)
                                               / 0.26862954) < 1e-5
