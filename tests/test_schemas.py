import dataclasses

import pyarrow as pa
import pytest

from vlmloom.schemas import formats
from vlmloom.schemas.config import ConfigError, apply_overrides, build_config, config_hash
from vlmloom.schemas.records import (
    Annotations, Grounding, ImageRef, LineageEntry, Message, OcrLine, RecordError, Rejection, Sample, Segment,
    make_key, rejections_to_table, samples_to_table, table_to_samples)


def _full_sample() -> Sample:
    return Sample(
        key=make_key("wds", "000001"), source="wds", source_id="000001", kind="qa",
        images=[ImageRef("ab" * 32, 640, 480, "jpeg", b"\xff\xd8jpeg", "a.tar#000001.jpg")],
        segments=[Segment("text", "see"), Segment("image", image_index=0)],
        text="a chart", recaption="a bar chart with 3 bars",
        messages=[Message("user", "<image>What is the max?"), Message("assistant", "<think>…</think><answer>30</answer>")],
        answer="30", domain="math",
        annotations=Annotations(ocr=[OcrLine("Q1", [1, 2, 3, 4], [1, 2, 3, 2, 3, 4, 1, 4], 0.5)],
                                grounding=[Grounding("bar", [10, 20, 30, 40], "ocr")]),
        signals={"phash": "00ff00ff00ff00ff", "clip_score": 0.31, "concept_ids": [3, 7]},
        lineage=[LineageEntry("decode", "abc", "kept")], meta={"kind": "qa", "extra": "ü"},
    )


def test_sample_arrow_round_trip_is_lossless():
    sample = _full_sample()
    table = samples_to_table([sample])
    assert table.schema.equals(table.schema) and table.num_rows == 1
    assert table_to_samples(table) == [sample]


def test_sample_json_round_trip_drops_bytes_then_restores_them():
    sample = _full_sample()
    text = sample.to_json()
    assert "jpeg" not in text.split('"bytes"')[1][:20]  # bytes are not in the json
    restored = Sample.from_json(text, [b"\xff\xd8jpeg"])
    assert restored == sample


def test_validation_names_the_key_and_field():
    with pytest.raises(RecordError, match=r"record 'k1': field 'kind'"):
        Sample(key="k1", source="s", source_id="1", kind="movie").validate()
    with pytest.raises(RecordError, match=r"segments\[0\].image_index"):
        Sample(key="k2", source="s", source_id="2", segments=[Segment("image", image_index=0)]).validate()
    with pytest.raises(RecordError, match="field 'key'"):
        Sample(key="a.b", source="s", source_id="3").validate()


def test_keys_are_stable_unique_and_webdataset_safe():
    assert make_key("my source", "1") == make_key("my source", "1")
    assert make_key("s", "1") != make_key("s", "2") != make_key("t", "1")
    assert "." not in make_key("a.b.c", "x.y") and " " not in make_key("my source", "1")


def test_rejection_table_and_training_text():
    table = rejections_to_table([Rejection("k", "s", "1", "decode", "empty_bytes", "image 0 has 0 bytes")])
    assert table.to_pylist()[0]["reason"] == "empty_bytes"
    sample = _full_sample()
    assert sample.training_text() == "a chart"
    sample.signals["text_choice"] = "recaption"
    assert sample.training_text() == "a bar chart with 3 bars"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
    size: int = 3  # doc
    ratio: float = 0.5

    def validate(self):
        if self.size < 0:
            raise ConfigError("inner.size must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    name: str = "x"
    inner: _Inner = _Inner()
    tags: list[str] = dataclasses.field(default_factory=list)
    flag: bool = False


def test_build_config_coerces_and_explains_errors():
    cfg = build_config(_Outer, {"inner": {"size": "7"}, "tags": ["a"], "flag": "true"})
    assert cfg == _Outer(inner=_Inner(size=7), tags=["a"], flag=True)
    with pytest.raises(ConfigError, match=r"inner.sise: unknown key; did you mean 'size'"):
        build_config(_Outer, {"inner": {"sise": 1}})
    with pytest.raises(ConfigError, match=r"inner.ratio: expected float"):
        build_config(_Outer, {"inner": {"ratio": "lots"}})
    with pytest.raises(ConfigError, match="inner.size must be >= 0"):
        build_config(_Outer, {"inner": {"size": -1}})
    assert config_hash(cfg) == config_hash(build_config(_Outer, {"inner": {"size": 7}, "tags": ["a"], "flag": True}))
    assert config_hash(cfg) != config_hash(_Outer())


def test_overrides_parse_yaml_values():
    data = apply_overrides({"inner": {"size": 1}}, ["inner.size=9", "tags=[a, b]", "flag=true"])
    assert data == {"inner": {"size": 9}, "tags": ["a", "b"], "flag": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["oops"])


def test_format_names():
    assert formats.shard_name(3) == "00003.tar"  # packed shards
    assert formats.curated_shard_name(12, 3) == "b00012-00003.tar" and formats.part_name(12) == "part-00012.parquet"
    assert formats.image_member_name("k", 0, "JPEG") == "k.jpg"
    assert formats.image_member_name("k", 2, "png") == "k.2.png"
    assert isinstance(formats.MANIFEST_SCHEMA, pa.Schema)


def test_to_row_matches_dataclasses_asdict():
    """Sample.to_row skips asdict's deep copy for speed; the row must stay what asdict gives."""
    import dataclasses as dc
    import json as js

    from vlmloom.demo.records import synthetic_samples

    for sample in synthetic_samples(30, seed=4, kinds=("caption", "ocr", "interleaved", "qa", "grounding")):
        sample.signals["phash"] = "00ff"
        sample.with_lineage("decode", "h", "kept")
        for with_bytes in (True, False):
            reference = dc.asdict(sample)
            for img in reference["images"]:
                del img["span"]  # where the bytes lie in an input file: transport state, never written
                if not with_bytes:
                    img["bytes"] = None
            reference["signals"] = js.dumps(sample.signals, sort_keys=True)
            reference["meta"] = js.dumps(sample.meta, sort_keys=True, ensure_ascii=False)
            assert sample.to_row(with_bytes) == reference, sample.key


def test_sample_pickles_every_field_and_span():
    """Sample.__reduce__ pickles field values in tuples: every field, nested record and transport span survives."""
    import pickle

    from vlmloom.schemas.records import (Annotations, Grounding, ImageRef, Message, OcrLine, Segment, VideoRef)

    sample = Sample("k", "src", "7", kind="interleaved",
                    images=[ImageRef("ab", 3, 4, "png", None, "a.png", ("in.tar", 512, 9)),
                            ImageRef("cd", 1, 1, "jpeg", b"\xff\xd8", None)],
                    segments=[Segment("text", "hello"), Segment("image", image_index=0)], text="t", recaption="r",
                    messages=[Message("user", "<image> q")], answer="a", domain="math",
                    annotations=Annotations([OcrLine("x", [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8], 0.5)],
                                            [Grounding("cat", [5, 6, 7, 8], "input")]),
                    signals={"phash": "00ff", "lang": {"en": 0.9}}, meta={"url": "u", "nested": [1, {"a": None}]},
                    videos=[VideoRef("vv", "v.mp4", None, "mp4", 1.5, 2.0, 8, 6, "h264", 3, 3, "",
                                     ("in.tar", 1024, 99))])
    sample.with_lineage("read", "h1", "kept").with_lineage("decode", "h2", "kept")
    back = pickle.loads(pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == sample and back.to_row(with_bytes=False) == sample.to_row(with_bytes=False)
    assert [i.span for i in back.images] == [("in.tar", 512, 9), None]
    assert back.videos[0].span == ("in.tar", 1024, 99)
    assert type(back.annotations.ocr[0]) is OcrLine and type(back.lineage[0]).__name__ == "LineageEntry"
    back.images.append(ImageRef("ef"))  # the lists are the copy's own
    assert len(sample.images) == 2
