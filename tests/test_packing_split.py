"""Long interleaved documents are split into parts that fit seq_len (packing/split.py), through pack end to end."""
import filecmp
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlmloom.demo.records import make_image, synthetic_samples
from vlmloom.packing import tokenizer as T
from vlmloom.packing.builder import SequenceBuilder, mrope_position_ids
from vlmloom.packing.mixture import Recipe, RecipeSource
from vlmloom.packing.pack import PackConfig, _render, pack
from vlmloom.packing.reader import PackedDataset
from vlmloom.packing.split import _cut_text, _group, split_document, splittable
from vlmloom.schemas.curated import write_curated_dir
from vlmloom.schemas.packed import IGNORE_INDEX, document_key, part_key
from vlmloom.schemas.records import Message, Rejection, Sample, Segment

WORDS = "the red cat sat on a mat near blue boat while green birds flew over old town".split()


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    T.train_tokenizer([" ".join(WORDS) + ". A B!"] * 4, out, vocab_size=300)
    return SequenceBuilder(T.load_tokenizer(out))


def sentence(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n)).capitalize() + ". "


def document(key="doc", segments=6, sides=(56, 120, 84), sentences=3) -> Sample:
    """text, image, text, image, … (segments text segments, one image before each but the first)."""
    segs, images = [], []
    for i in range(segments):
        if i:
            side = sides[i % len(sides)]
            images.append(make_image(side, side + 28, i, "png" if i % 2 else "jpeg"))
            segs.append(Segment("image", image_index=len(images) - 1))
        segs.append(Segment("text", "".join(sentence(i * 10 + k) for k in range(sentences))))
    return Sample(key=key, source="docs", source_id=key, kind="interleaved", images=images, segments=segs)


def inner(builder, part):
    """A part's tokens and labels without its [gMASK]<sop> … <|endoftext|> frame."""
    assert part.input_ids[:2].tolist() == [builder.ids[T.GMASK], builder.ids[T.SOP]]
    assert part.input_ids[-1] == builder.ids[T.ENDOFTEXT]
    return part.input_ids[2:-1], part.labels[2:-1]


def test_document_split_into_parts(builder):
    doc = document()
    whole = builder.build(doc)
    L = len(whole) // 3
    assert splittable(builder, doc, whole)
    parts = split_document(builder, doc, whole, L)
    assert len(parts) >= 3 and all(len(p) <= L for p in parts)
    assert [p.key for p in parts] == [part_key("doc", i) for i in range(len(parts))] == \
        [f"doc#p{i}" for i in range(len(parts))]
    assert {document_key(p.key) for p in parts} == {"doc"} and document_key("a-b#pq") == "a-b#pq"
    # the parts' tokens and labels, frames removed, are the document's, in order: text and images all there once
    ids, labels = zip(*(inner(builder, p) for p in parts))
    doc_ids, doc_labels = inner(builder, whole)
    assert np.array_equal(np.concatenate(ids), doc_ids) and np.array_equal(np.concatenate(labels), doc_labels)
    assert [b for p in parts for b in p.images] == [im.bytes for im in doc.images]
    assert np.array_equal(np.concatenate([p.image_grid_thw for p in parts]), whole.image_grid_thw)
    for i, p in enumerate(parts):
        begins = np.flatnonzero(p.input_ids == builder.ids[T.BEGIN_OF_IMAGE])
        ends = np.flatnonzero(p.input_ids == builder.ids[T.END_OF_IMAGE])
        assert len(begins) == len(ends) == len(p.images)  # no image cut
        assert [int(e - b - 1) for b, e in zip(begins, ends)] == [int(g.prod()) // 4 for g in p.image_grid_thw]
        # the document's end is trained in the last part only
        assert p.labels[-1] == (builder.ids[T.ENDOFTEXT] if i == len(parts) - 1 else IGNORE_INDEX)
        # positions restart per part: a part's rows are those of the part alone
        assert p.rope_position_ids[:, 0].tolist() == [0, 0, 0]
        assert np.array_equal(p.rope_position_ids, mrope_position_ids(p.input_ids, builder.image_token_id,
                                                                      p.image_grid_thw, 2))
    # deterministic
    again = split_document(builder, doc, whole, L)
    assert [(p.key, p.input_ids.tobytes(), p.labels.tobytes()) for p in again] == \
        [(p.key, p.input_ids.tobytes(), p.labels.tobytes()) for p in parts]


def test_an_image_stays_with_the_text_after_it():
    img = Segment("image", image_index=0)
    text = Segment("text", "x")
    assert _group([(text, 5), (img, 4), (text, 3)], 10) == [[text], [img, text]]  # not [[text, img], [text]]
    assert _group([(text, 5), (img, 4), (text, 7)], 10) == [[text, img], [text]]  # together they do not fit
    assert _group([(img, 10), (img, 3), (text, 4)], 10) == [[img], [img, text]]
    assert _group([("ab", 2), ("cd", 2), ("e", 1)], 3) == [["ab"], ["cd", "e"]]


def test_long_text_segment_cut_at_sentences_then_whitespace(builder):
    text = "".join(sentence(i, 12) for i in range(30))
    budget = 40
    pieces = _cut_text(builder, text, budget)
    assert "".join(pieces) == text and len(pieces) > 1
    assert all(len(builder.encode(p)) <= budget for p in pieces)
    assert all(p.endswith(". ") for p in pieces[:-1])  # cut after sentences only
    words = " ".join(WORDS * 6)  # no sentence end: cut after whitespace
    pieces = _cut_text(builder, words, budget)
    assert "".join(pieces) == words and all(len(builder.encode(p)) <= budget for p in pieces)
    assert all(p.endswith(" ") for p in pieces[:-1]) and len(pieces) > 1
    assert _cut_text(builder, "short. text", budget) == ["short. text"]
    assert _cut_text(builder, "x" * 400, 8) is None
    # a document of one long text segment becomes parts whose texts join to it
    doc = Sample(key="t", source="docs", source_id="t", kind="interleaved", segments=[Segment("text", text)])
    parts = split_document(builder, doc, builder.build(doc), budget + 3)
    assert len(parts) == len(_cut_text(builder, text, budget)) and all(len(p) <= budget + 3 for p in parts)
    unbreakable = Sample(key="u", source="docs", source_id="u", kind="interleaved",
                         segments=[Segment("text", "x" * 400)])
    assert split_document(builder, unbreakable, builder.build(unbreakable), 11).reason == "text_unbreakable"


def test_an_image_longer_than_seq_len_is_rejected_with_its_reason(builder):
    doc = document(sides=(56, 56, 700))  # image 1 (before text 2) is 700×728 → hundreds of tokens
    config = PackConfig(output="x", seq_len=160)
    got = _render(builder, doc, config)
    assert isinstance(got, Rejection) and got.reason == "image_longer_than_seq_len" and got.key == "doc"
    assert "image 1 takes" in got.detail and "seq_len 160" in got.detail


def test_only_documents_rendered_from_their_segments_are_split(builder):
    long_caption = Sample(key="c", source="docs", source_id="c", kind="caption", images=[make_image(56, 56, 0)],
                          text=" ".join(WORDS * 20))
    assert _render(builder, long_caption, PackConfig(output="x", seq_len=64)).reason == "too_long"
    doc = document()
    n = len(builder.build(doc))
    assert _render(builder, doc, PackConfig(output="x", seq_len=n // 2, split_documents=False)).reason == "too_long"
    assert len(_render(builder, doc, PackConfig(output="x", seq_len=n // 2))) >= 2
    assert [p.key for p in _render(builder, doc, PackConfig(output="x", seq_len=n))] == ["doc"]  # fits: unchanged
    # turns that could not be rendered for the whole document (one <image> for 5 images): its parts are documents
    # too, though a part holding one image would fit those turns
    doc.messages = [Message("user", "<image> what is this?"), Message("assistant", "a cat")]
    whole = builder.build(doc)
    assert whole.rendered_as == "document" and whole.turns_unusable == "image_placeholder_mismatch"
    parts = _render(builder, doc, PackConfig(output="x", seq_len=n // 3))
    assert any(len(p.images) == 1 for p in parts) and {p.rendered_as for p in parts} == {"document"}


def test_pack_splits_documents_byte_identically(tmp_path):
    others = synthetic_samples(20, seed=3, source="docs", kinds=("caption", "interleaved"), image_side=(20, 90))
    docs = [document(f"docs-long{i}", segments=5 + i, sentences=8) for i in range(3)]
    cur = write_curated_dir(str(tmp_path / "cur"), others + docs, per_shard=8)
    recipe = Recipe(seed=2, sources=[RecipeSource(path=cur, weight=1.5, max_upsample=2)])
    outs = []
    for name, cache_mb in (("a", 512), ("b", 0)):  # b re-renders (and re-splits) in pass 2
        outs.append(str(tmp_path / name))
        report = pack(PackConfig(output=outs[-1], seq_len=256, sequences_per_shard=3, recipe=recipe,
                                 tokenizer_vocab_size=300, cache_mb=cache_mb))
    shards = sorted(os.listdir(f"{outs[0]}/shards"))
    assert shards == sorted(os.listdir(f"{outs[1]}/shards"))
    assert filecmp.cmpfiles(f"{outs[0]}/shards", f"{outs[1]}/shards", shards, shallow=False)[1:] == ([], [])
    assert filecmp.cmp(f"{outs[0]}/manifest.parquet", f"{outs[1]}/manifest.parquet", shallow=False)
    split = report["split"]
    assert split["documents"] >= 3 and split["parts"] > 2 * split["documents"]
    assert report["dropped"] == 0
    keys = [k for row in pq.read_table(f"{outs[0]}/manifest.parquet").to_pylist() for k in row["sample_keys"]]
    for d in docs:  # every part packed, each at least once (weight 1.5: a part may be used twice), none other
        mine = sorted({k for k in keys if document_key(k) == d.key})
        assert mine and all(k.startswith(d.key + "#p") for k in mine)
        assert sorted(int(k.rsplit("#p", 1)[1]) for k in mine) == list(range(len(mine)))
    meta = json.load(open(f"{outs[0]}/pack_report.json"))
    assert meta["split"] == split
    for seq in PackedDataset(outs[0]):  # text positions restart at every sample and part
        at = 0
        for n in seq["seq_lens"].tolist():
            assert seq["position_ids"][0, at:at + n].tolist() == list(range(n))
            assert seq["position_ids"][1:, at].tolist() == [0, 0, 0]
            at += n
