"""The kinds table (schemas/kinds.py), driven through every stage that consults it: one record of every kind runs
through decode, heuristics, language id, exact-dedup content, concepts, contamination texts, the renderable check
and pack's builder; and curate → pack over one record of every kind drops nothing in pack."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from test_video import make_video

from vlmloom.curation.concepts import ConceptConfig, ConceptMatcher
from vlmloom.curation.contamination import BenchmarkItem, ContaminationConfig, ContaminationIndex
from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.curation.filters import HeuristicConfig, LanguageConfig, LanguageIdentifier, judge_heuristics, judge_language
from vlmloom.curation.grounding import GroundingConfig
from vlmloom.curation.ocr import OcrConfig
from vlmloom.curation.renderable import judge_renderable
from vlmloom.demo.records import make_image
from vlmloom.packing import tokenizer as T
from vlmloom.packing import builder as builder_module
from vlmloom.packing.builder import RENDERERS, BuiltSample, SequenceBuilder
from vlmloom.schemas import kinds
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import KINDS, Annotations, Grounding, ImageRef, Message, Rejection, Sample, Segment, VideoRef
from vlmloom.schemas.registry import Registry

# One long sentence per kind, in the texts its row declares: what contamination, concepts and language id must see.
MARKER = {kind: f"the {kind}marker sentence names a lighthouse standing on a rocky island far out in the cold "
                f"northern sea" for kind in KINDS}
CLIP = make_video(20, 64, 64, fps=10)  # 2 s, 64 px sides (the heuristics' min_side reads a video's size too)


def _image(seed: int) -> ImageRef:
    ref = make_image(96, 80, seed)
    return ImageRef(bytes=ref.bytes)  # as a reader leaves it: decode fills sha256, size and format


def _record(kind: str, seed: int = 0) -> Sample:
    """A complete record of `kind`, its marker in the text its kind's row reads."""
    base = dict(key=f"k-{kind}-{seed}", source="s", source_id=f"{kind}-{seed}", kind=kind)
    marker = MARKER[kind]
    if kind == "interleaved":
        return Sample(**base, images=[_image(seed)], segments=[
            Segment("text", marker), Segment("image", image_index=0), Segment("text", "after the picture")])
    if kind == "qa":
        return Sample(**base, images=[_image(seed)], messages=[
            Message("system", "You are a helpful assistant."), Message("user", f"<image>{marker}?"),
            Message("assistant", "It is a lighthouse.")])
    if kind == "grounding":
        return Sample(**base, images=[_image(seed)], text=marker,
                      annotations=Annotations(grounding=[Grounding("lighthouse", [10, 20, 300, 400], "input")]))
    if kind == "video":
        return Sample(**base, videos=[VideoRef(bytes=CLIP)], text=marker)
    return Sample(**base, images=[_image(seed)], text=marker)


@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier()


@pytest.fixture(scope="module")
def builder(tmp_path_factory) -> SequenceBuilder:
    out = str(tmp_path_factory.mktemp("tok"))
    T.train_tokenizer([m for m in MARKER.values()] + ["It is a lighthouse. after the picture"], out, vocab_size=400)
    return SequenceBuilder(T.load_tokenizer(out))


def test_the_table_has_one_row_per_kind_and_valid_columns():
    assert kinds.KIND_TABLE.names() == sorted(KINDS)
    for name in KINDS:
        kind = kinds.KIND_TABLE.get(name)
        assert kind.needs in kinds.NEEDS and kind.text_rules in ("caption", "document")
        assert kind.render in RENDERERS, f"kind {name!r}: pack cannot render it"
    with pytest.raises(ValueError, match="render 'poster'"):
        kinds.Kind("caption", min_images=0, needs="", text_rules="caption", texts=list, dedup_content=bytes,
                   render="poster")
    assert kinds.kinds_annotated_by("ocr") == ("ocr",)
    assert kinds.kinds_annotated_by("grounding") == ("ocr", "grounding", "gui")
    assert kinds.kinds_annotated_by("concepts") == ("caption", "interleaved")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_runs_through_every_stage(kind, identifier, builder):
    sample = _record(kind)
    # decode: images as the kind requires
    verdict = decode_sample(sample, DecodeConfig())
    assert verdict.keep, verdict.detail
    verdict.merge_into(sample, "decode")
    assert all(image.sha256 and image.width == 96 for image in sample.images)
    # the kind's texts: its marker, no placeholder, no system prompt
    texts = kinds.sample_texts(sample)
    assert any(MARKER[kind] in t for t in texts) and not any("<image>" in t or "helpful" in t for t in texts)
    # heuristics: the table's rule set on those texts
    verdict = judge_heuristics(sample, HeuristicConfig())
    assert verdict.keep
    rules = kinds.kind_of(sample).text_rules
    assert set(verdict.signals) == ({"caption_chars", "caption_repetition"} if rules == "caption"
                                    else {"document_chars", "document_repetition"})
    # language id on them
    verdict = judge_language(sample, identifier, LanguageConfig(allowed=("en",)))
    assert verdict.keep and verdict.signals["lang"] == "en"
    # exact dedup content: a sha256 of the kind's content, the kind part of it
    digest = kinds.dedup_content_digest(sample)
    again = _record(kind)
    decode_sample(again, DecodeConfig())  # fills the image hashes the digest reads
    assert len(digest) == 64 and digest == kinds.dedup_content_digest(again)
    # concepts read the kind's texts
    matcher = ConceptMatcher(["lighthouse", "rocky island"])
    assert matcher.match(" ".join(texts)) == [0, 1]
    # contamination reads them too
    config = ContaminationConfig(check_images=False)
    index = ContaminationIndex.build(config, iter([BenchmarkItem("bench", "q1", question=MARKER[kind])]))
    hit = index.text_hit(sample)
    assert hit is not None and (hit.benchmark, hit.item_id) == ("bench", "q1")
    # what pack needs is there, and pack renders it
    assert judge_renderable(sample).keep
    built = builder.build(sample)
    assert isinstance(built, BuiltSample), built
    assert built.num_label_tokens > 1 and built.image_grid_thw.shape[0] == len(sample.images)
    assert built.video_grid_thw.shape[0] == len(sample.videos)


def test_a_rendering_pack_lacks_is_unsupported_kind_saying_so(builder, monkeypatch):
    without_video = Registry("rendering")
    for name in ("pretrain", "chat"):
        without_video.register(name)(RENDERERS.get(name))
    monkeypatch.setattr(builder_module, "RENDERERS", without_video)
    built = builder.build(_record("video"))
    assert isinstance(built, Rejection) and built.reason == "unsupported_kind"
    assert built.detail == "kind 'video' renders as 'video', which pack does not render yet (renderings: chat, pretrain)"
    assert isinstance(builder.build(_record("caption")), BuiltSample)


def test_dedup_content_per_kind():
    """qa: several questions about one image are different records; caption: two captions of one image are one."""
    def digest(kind, **fields):
        return kinds.dedup_content_digest(Sample(key="k", source="s", source_id="1", kind=kind,
                                                 images=[ImageRef(sha256="a" * 64)], **fields))
    assert digest("caption", text="one") == digest("caption", text="two")
    assert digest("qa", messages=[Message("user", "one?")]) != digest("qa", messages=[Message("user", "two?")])
    assert digest("qa", answer="1") != digest("qa", answer="2")
    assert digest("caption", text="one") != digest("ocr", text="one")  # the kind is part of it
    doc = [Segment("text", "x"), Segment("image", image_index=0)]
    assert digest("interleaved", segments=doc) != digest("interleaved", segments=doc[::-1])


def test_language_of_a_name_is_und():
    assert judge_language(Sample(key="k", source="s", source_id="1", text="Kanye West"), LanguageIdentifier(),
                          LanguageConfig()).signals == {"lang": "und", "lang_score": 0.0}


def test_unmet_needs_are_pack_reasons():
    image = [ImageRef(sha256="a" * 64, width=64, height=64)]
    cases = {
        "caption": (Sample(key="c", source="s", source_id="c", images=image), "empty_text"),
        "ocr": (Sample(key="o", source="s", source_id="o", kind="ocr", images=image), "empty_text"),
        "gui": (Sample(key="g", source="s", source_id="g", kind="gui", images=image), "empty_text"),
        "interleaved": (Sample(key="i", source="s", source_id="i", kind="interleaved", images=image,
                               segments=[Segment("image", image_index=0)]), "empty_text"),
        "qa": (Sample(key="q", source="s", source_id="q", kind="qa", images=image,
                      messages=[Message("user", "<image>what?")]), "no_assistant_turn"),
    }
    for kind, (sample, reason) in cases.items():
        verdict = judge_renderable(sample)
        assert (verdict.keep, verdict.reason) == (False, reason), kind
    # what later stages fill satisfies them: OCR lines, boxes, an answer
    ocr = cases["ocr"][0]
    ocr.annotations.grounding.append(Grounding("x", [1, 2, 3, 4]))
    assert judge_renderable(ocr).keep
    qa = cases["qa"][0]
    qa.answer = "7"
    assert judge_renderable(qa).keep


def test_qa_with_an_answer_but_no_assistant_turn_renders_question_then_answer(builder):
    ids = builder.ids
    for sample in (Sample(key="a", source="s", source_id="a", kind="qa", images=[make_image(64, 64, 1)],
                          text="what stands on the island", answer="a lighthouse"),
                   Sample(key="b", source="s", source_id="b", kind="qa", images=[make_image(64, 64, 1)],
                          messages=[Message("user", "<image>what stands on the island")], answer="a lighthouse")):
        built = builder.build(sample)
        assert isinstance(built, BuiltSample) and built.rendered_as == "chat"
        trained = [int(t) for t, label in zip(built.input_ids, built.labels) if label != -100]
        assert builder.tokenizer.decode(trained[:-1]).strip() == "a lighthouse"
        assert trained[-1] == ids[T.ENDOFTEXT]
        user = list(built.input_ids).index(ids[T.USER])
        assert list(built.input_ids).index(ids[T.BEGIN_OF_IMAGE]) > user  # the image sits in the user turn


def test_model_stage_kinds_default_to_the_table_and_are_validated():
    assert build_config(OcrConfig, {}).kinds == ()
    assert build_config(GroundingConfig, {"kinds": ["caption"]}).kinds == ("caption",)
    for cls, section in ((ConceptConfig, "concepts"), (GroundingConfig, "grounding"), (OcrConfig, "ocr")):
        with pytest.raises(ConfigError, match=rf"{section}.kinds: unknown kind 'captions'; known: caption, "):
            build_config(cls, {"kinds": ["captions"]})
    ocr_record = Sample(key="k", source="s", source_id="1", kind="ocr")
    assert ConceptConfig().applies(Sample(key="k", source="s", source_id="1")) and not ConceptConfig().applies(ocr_record)
    assert ConceptConfig(kinds=("ocr",)).applies(ocr_record)


# --- curate → pack ---------------------------------------------------------------------------------------------
def _tar_records() -> dict[str, tuple[dict, bytes]]:
    """source id → (json member, image or video bytes): one kept record of every kind, and records that curate
    must reject because pack could not train on them."""
    def image(seed):
        return make_image(96, 80, seed).bytes
    return {
        "video": ({"kind": "video", "text": MARKER["video"]}, CLIP),
        "caption": ({"kind": "caption", "text": MARKER["caption"]}, image(1)),
        "interleaved": ({"kind": "interleaved", "segments": [{"type": "text", "text": MARKER["interleaved"]},
                                                             {"type": "image", "image_index": 0},
                                                             {"type": "text", "text": "after the picture"}]},
                        image(2)),
        "ocr": ({"kind": "ocr", "text": MARKER["ocr"].upper()}, image(3)),
        "grounding": ({"kind": "grounding", "text": MARKER["grounding"]}, image(4)),
        "gui": ({"kind": "gui", "text": MARKER["gui"]}, image(5)),
        "qa-turns": ({"kind": "qa", "messages": [{"role": "user", "content": f"<image>{MARKER['qa']}?"},
                                                 {"role": "assistant", "content": "A lighthouse."}]}, image(6)),
        "qa-answer": ({"kind": "qa", "text": "which building stands on the rocky island", "answer": "a lighthouse"},
                      image(7)),
        "qa-question-answer": ({"kind": "qa", "answer": "north", "messages": [
            {"role": "user", "content": "<image>in which direction does the lighthouse face"}]}, image(8)),
        # rejected in curate, never in pack:
        "qa-unanswered": ({"kind": "qa", "messages": [{"role": "user", "content": "<image>what is it, and why?"}]},
                          image(9)),
        "caption-image-only": ({"kind": "caption"}, image(10)),
        "ocr-image-only": ({"kind": "ocr"}, image(11)),
        "gui-image-only": ({"kind": "gui"}, image(12)),
    }


def test_curate_then_pack_drops_nothing_curate_kept(tmp_path):
    from vlmloom.packing.pack import PackConfig, pack
    from vlmloom.pipelines.curate import curate, load_config

    records = _tar_records()
    path = tmp_path / "raw.tar"
    with tarfile.open(path, "w") as tar:
        for source_id, (meta, media) in records.items():
            for ext, data in (("json", json.dumps(meta).encode()), ("mp4" if meta["kind"] == "video" else "png", media)):
                info = tarfile.TarInfo(f"{source_id}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    kept_kinds = {meta["kind"] for source_id, (meta, _) in records.items()}
    assert kept_kinds == set(KINDS), "add a record of every kind to _tar_records"
    curated = str(tmp_path / "curated")
    # near-duplicate stages off: they judge no kind differently and triple the job's graph
    config = {"inputs": [{"path": str(path)}], "output": curated, "disable": ["near_dup_image", "near_dup_text"]}
    report = curate(load_config(config), progress=False)
    rejected = {r["source_id"]: (r["stage"], r["reason"]) for r in pq.read_table(f"{curated}/rejected").to_pylist()}
    assert rejected == {"qa-unanswered": ("renderable", "no_assistant_turn"),
                        "caption-image-only": ("heuristics", "caption_empty"),
                        "ocr-image-only": ("renderable", "empty_text"),
                        "gui-image-only": ("renderable", "empty_text")}
    kept = pq.read_table(f"{curated}/manifest").to_pylist()
    assert sorted(r["source_id"] for r in kept) == sorted(set(records) - set(rejected))
    assert report["kinds"] == {"caption": 1, "grounding": 1, "gui": 1, "interleaved": 1, "ocr": 1, "qa": 3, "video": 1}

    packed = pack(PackConfig(inputs=[curated], output=str(tmp_path / "packed"), seq_len=2048,
                             tokenizer_vocab_size=300), progress=False)
    assert packed["dropped_by_reason"] == {} and packed["samples_packed"] == len(kept)
    rendering = packed["rendering"]
    assert rendering["chat"] == {"qa": 3} and rendering["document"] == {
        "caption": 1, "grounding": 1, "gui": 1, "interleaved": 1, "ocr": 1, "video": 1}
    assert os.path.exists(tmp_path / "packed" / "_SUCCESS")
