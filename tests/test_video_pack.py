"""A video sample through pack and the trainer's collator, against transformers' tiny Glm4v.

Oracles: the token sequence the GLM-4.1V processor writes (`Glm4vProcessor.replace_video_token` inside
`<|begin_of_video|>…<|end_of_video|>`), `Glm4vModel.get_rope_index` with `video_grid_thw` for the positions, and
the model itself: a video sample packed with image samples gives the logits it gives alone, where "alone" feeds
the video the model's own way (pixel_values_videos + video_grid_thw).
"""
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
av = pytest.importorskip("av")

from test_video import make_video  # noqa: E402

from vlmloom.curation.video import validate_video_sample, video_sample_from_bytes  # noqa: E402
from vlmloom.demo.records import synthetic_samples  # noqa: E402
from vlmloom.packing import tokenizer as T  # noqa: E402
from vlmloom.packing.builder import SequenceBuilder  # noqa: E402
from vlmloom.packing.shards import assemble, decode_entry, entry_members  # noqa: E402
from vlmloom.packing.video import video_pixel_values  # noqa: E402
from vlmloom.schemas.records import Sample, samples_to_table, table_to_samples  # noqa: E402
from vlmloom.trainer.data import PackedCollator  # noqa: E402
from vlmloom.trainer.model import tiny_glm4v_config  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    texts = [w for s in synthetic_samples(40, seed=1) for w in [s.text or ""]] + ["0 1 2 3 4 5 6 7 8 9 a red square"]
    tok = T.train_tokenizer(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=400)
    builder = SequenceBuilder(tok)
    ids = builder.ids
    config = tiny_glm4v_config(  # the trainer's own tiny GLM-4.1V shape, with this tokenizer's special ids
        vocab_size=len(tok), image_token_id=ids[T.IMAGE], video_token_id=ids[T.VIDEO],
        image_start_token_id=ids[T.BEGIN_OF_IMAGE], image_end_token_id=ids[T.END_OF_IMAGE],
        video_start_token_id=ids[T.BEGIN_OF_VIDEO], video_end_token_id=ids[T.END_OF_VIDEO])
    torch.manual_seed(0)
    model = transformers.Glm4vForConditionalGeneration(config).eval()
    return tok, builder, model


def video_sample(name: str, frames: int, width: int, height: int, fps: float, text: str = "a red square") -> Sample:
    sample = video_sample_from_bytes("clips", name, make_video(frames, width, height, fps=fps), uri=f"{name}.mp4",
                                     text=text)
    reason, _, signals = validate_video_sample(sample)
    assert reason is None
    return sample


CASES = [("a", 41, 32, 32, 20), ("b", 25, 64, 48, 10), ("c", 9, 48, 64, 3), ("d", 15, 40, 56, 7)]


def _mm_types(builder, ids: np.ndarray) -> np.ndarray:
    """Glm4vProcessor.create_mm_token_type_ids (processing_glm4v.py), on our ids."""
    starts = np.cumsum(ids == builder.ids[T.BEGIN_OF_VIDEO])
    ends = np.cumsum(ids == builder.ids[T.END_OF_VIDEO])
    types_ = np.zeros_like(ids)
    types_[(ids == builder.image_token_id) & (starts > ends)] = 2
    types_[(ids == builder.image_token_id) & ~(starts > ends)] = 1
    return types_


@pytest.mark.parametrize("name,frames,width,height,fps", CASES)
def test_tokens_and_positions_equal_the_processor_and_get_rope_index(setup, name, frames, width, height, fps):
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor
    from transformers.video_utils import VideoMetadata

    tok, builder, model = setup
    sample = video_sample(name, frames, width, height, fps)
    built = builder.build(sample)
    ref = sample.videos[0]
    # the processor's text: the chat template's video slot with replace_video_token's structure in it
    stub = types.SimpleNamespace(video_processor=types.SimpleNamespace(merge_size=2), image_token=T.IMAGE)
    stub.replace_frame_token_id = types.MethodType(Glm4vProcessor.replace_frame_token_id, stub)
    meta = VideoMetadata(total_num_frames=ref.frame_count, fps=ref.fps,
                         frames_indices=built.video_frame_indices.tolist())
    structure = Glm4vProcessor.replace_video_token(stub, {"video_grid_thw": torch.as_tensor(built.video_grid_thw),
                                                          "video_metadata": [meta]}, 0)
    text = f"{T.GMASK}{T.SOP}{T.BEGIN_OF_VIDEO}{structure}{T.END_OF_VIDEO}a red square{T.ENDOFTEXT}"
    expected_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert built.input_ids.tolist() == expected_ids
    ids = torch.as_tensor(built.input_ids, dtype=torch.long)[None]
    positions, _ = model.model.get_rope_index(ids, torch.as_tensor(_mm_types(builder, built.input_ids))[None],
                                              video_grid_thw=torch.as_tensor(built.video_grid_thw, dtype=torch.long))
    assert int((positions[:, 0].numpy() != built.rope_position_ids).sum()) == 0
    # labels: the caption and the final <|endoftext|>; the video (frames, timestamps, begin/end) is context
    trained = built.labels != -100
    assert tok.decode(built.input_ids[trained]) == f"a red square{T.ENDOFTEXT}"


def test_records_carry_videos_and_old_rows_still_load():
    sample = video_sample("rt", 20, 32, 32, 10)
    back = table_to_samples(samples_to_table([sample]))[0]
    assert back.videos == sample.videos and back.videos[0].bytes == sample.videos[0].bytes
    assert Sample.from_json(sample.to_json(), [], [sample.videos[0].bytes]).videos == sample.videos
    old_row = sample.to_row()
    del old_row["videos"]  # a row written before the field existed
    assert Sample.from_row(old_row).videos == []
    from vlmloom.schemas.kinds import dedup_content_digest

    other = video_sample("rt2", 20, 32, 32, 10, text="another caption")  # the same clip: the same content
    assert dedup_content_digest(other) == dedup_content_digest(sample)
    assert dedup_content_digest(video_sample("rt3", 21, 32, 32, 10)) != dedup_content_digest(sample)


def _alone(model, builder, built, processor):
    ids = torch.as_tensor(built.input_ids, dtype=torch.long)[None]
    pos = torch.as_tensor(np.concatenate([np.arange(len(built))[None], built.rope_position_ids]), dtype=torch.long)
    kwargs = {}
    if built.videos:  # the model's own video path
        at, rows = 0, []
        for data, g in zip(built.videos, built.video_grid_thw):
            rows.append(video_pixel_values(data, built.video_frame_indices[at:at + 2 * g[0]].tolist(), g))
            at += 2 * g[0]
        kwargs = dict(pixel_values_videos=torch.from_numpy(np.concatenate(rows)),
                      video_grid_thw=torch.as_tensor(built.video_grid_thw, dtype=torch.long))
    elif built.images:
        out = processor([Image.open(io.BytesIO(b)).convert("RGB") for b in built.images], return_tensors="pt")
        kwargs = dict(pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos[:, None], use_cache=False,
                     mm_token_type_ids=torch.as_tensor(_mm_types(builder, built.input_ids))[None], **kwargs).logits[0]


def test_video_packed_with_images_gives_the_logits_it_gives_alone(setup):
    tok, builder, model = setup
    images = [builder.build(s) for s in synthetic_samples(3, seed=3, image_side=(28, 90), max_words=8)]
    videos = [builder.build(video_sample(n, f, w, h, fps)) for n, f, w, h, fps in CASES[:2]]
    built = [images[0], videos[0], images[1], videos[1], images[2]]
    row = assemble(built, sum(len(b) for b in built) + 5, builder.pad_id)
    # through the packed-shard members and back, as the trainer reads it
    members = {name.split(".", 1)[1]: data for name, data in entry_members("000000000", row)}
    record = decode_entry("000000000", members)
    assert len(record["videos"]) == 2 and np.array_equal(record["video_grid_thw"], row["video_grid_thw"])
    processor = transformers.Glm4vImageProcessorPil()
    batch = PackedCollator(model.config, image_processor=processor)([record])
    assert batch["video_grid_thw"].tolist() == row["video_grid_thw"].tolist()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                       mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False).logits[0]
    at = 0
    for b in built:
        diff = (packed[at:at + len(b)] - _alone(model, builder, b, processor)).abs().max().item()
        assert diff < 1e-4, f"{b.key}: packed logits differ by {diff}"
        at += len(b)
    # the negative control: a video sample seen with the wrong frames does change (the test can fail)
    first = 2 * int(record["video_grid_thw"][0, 0])  # video 0's frames, in reverse order
    indices = record["video_frame_indices"].copy()
    indices[:first] = indices[:first][::-1]
    shuffled = dict(record, video_frame_indices=indices)
    other = PackedCollator(model.config, image_processor=processor)([shuffled])
    assert not torch.equal(other["pixel_values"], batch["pixel_values"])
