"""Image bytes that lie in a local input file travel as a span (file, offset, length) between pipeline steps:
the readers record where, decode / the model stages / the writer read them again, and the shuffles move
metadata. These tests pin the parts that make that safe: exact offsets, no span where offsets do not address
the file, re-encoded images keep their bytes, a changed input fails loudly, and the output is the same as
when the bytes ride along."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from PIL import Image

from vlmloom.curation import readers
from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.pipelines.sources import InputConfig, ReadInputs
from vlmloom.schemas.curated import bucket_files, estimated_size, sample_members
from vlmloom.schemas.records import ImageRef, Sample, SourceChanged, attach_bytes, release_bytes


def _jpeg(seed: int, size=(48, 40), orientation: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]], compress: bool = False) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buf.getvalue(), mtime=0) if compress else buf.getvalue()
    with open(path, "wb") as fh:
        fh.write(data)


def _span_bytes(span) -> bytes:
    path, offset, length = span
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def test_tar_spans_address_each_member_exactly(tmp_path):
    long_key = "k" * 140  # a pax long-name header moves the data offset
    members = [("a.jpg", _jpeg(1)), ("a.txt", b"first"), (f"{long_key}.png", b"\x89PNG-not-really"),
               (f"{long_key}.json", b'{"x": 1}'), ("c.1.jpg", _jpeg(3)), ("c.jpg", _jpeg(2))]
    path = tmp_path / "in.tar"
    _write_tar(path, members)
    with open(path, "rb") as fh:
        records = [r for r in readers.iter_tar_records(fh, str(path), str(path))]
    by_name = dict(members)
    spans = 0
    for record in records:
        for ext, span in record.spans.items():
            assert span[0] == os.path.abspath(path)
            assert _span_bytes(span) == record.files[ext] == by_name[f"{record.source_id}.{ext}"]
            spans += 1
    assert spans == len(members)
    sample = readers.record_to_sample(records[2], "src")
    assert [img.span[1:] for img in sample.images] == [records[2].spans["jpg"][1:], records[2].spans["1.jpg"][1:]]


def test_no_spans_where_offsets_do_not_address_the_file(tmp_path):
    members = [("a.jpg", _jpeg(1)), ("a.txt", b"x")]
    gz = tmp_path / "in.tar"  # gzip content under a .tar name: offsets are in the decompressed stream
    _write_tar(gz, members, compress=True)
    with open(gz, "rb") as fh:
        (record,) = readers.iter_tar_records(fh, str(gz), str(gz))
    assert record.files["jpg"] == members[0][1] and record.spans == {}
    plain = tmp_path / "plain.tar"
    _write_tar(plain, members)
    with open(plain, "rb") as fh:  # no local file named: the stream may not be that file
        (record,) = readers.iter_tar_records(fh, str(plain))
    assert record.spans == {}


def _spanned(tmp_path, data: bytes, name="img.bin", pad=b"HEAD") -> ImageRef:
    path = tmp_path / name
    path.write_bytes(pad + data + b"TAIL")
    return ImageRef(span=(str(path), len(pad), len(data)))


def test_load_attach_release_and_accessors(tmp_path):
    data = _jpeg(5)
    ref = _spanned(tmp_path, data)
    assert ref.bytes is None and ref.has_bytes and ref.nbytes == len(data)
    assert ref.load_bytes() == data and ref.bytes is None  # loading does not hold
    sample = Sample(key="k", source="s", source_id="1", images=[ref, ImageRef(bytes=b"inline")])
    attach_bytes(sample)
    assert ref.bytes == data
    release_bytes(sample)
    assert ref.bytes is None and sample.images[1].bytes == b"inline"  # no span: the bytes stay
    assert "span" not in sample.to_row()["images"][0]
    assert sample.to_row()["images"][0]["bytes"] == data and ref.bytes is None  # a spanned image's row has its bytes
    assert ImageRef(uri="x").has_bytes is False and ImageRef(uri="x").nbytes == 0


def test_a_changed_or_shortened_input_is_an_error_not_other_bytes(tmp_path):
    data = _jpeg(6)
    ref = _spanned(tmp_path, data)
    ref.sha256 = hashlib.sha256(data).hexdigest()
    path = ref.span[0]
    raw = bytearray(open(path, "rb").read())
    raw[10] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(SourceChanged, match="modified during the job"):
        ref.load_bytes()
    open(path, "wb").write(b"HEAD")
    with pytest.raises(OSError, match="shortened"):
        ref.load_bytes()


def test_decode_reads_spans_and_rotation_drops_the_span(tmp_path):
    upright, rotated = _jpeg(7), _jpeg(8, orientation=6)
    sample = Sample(key="k", source="s", source_id="1",
                    images=[_spanned(tmp_path, upright, "a"), _spanned(tmp_path, rotated, "b")])
    verdict = decode_sample(sample, DecodeConfig())
    assert verdict.keep
    first, second = sample.images
    assert first.bytes == upright and first.span is not None  # unchanged: may be let go and re-read
    assert second.bytes != rotated and second.span is None  # re-encoded upright: only the held bytes are right
    release_bytes(sample)
    assert first.bytes is None and second.bytes is not None
    assert second.sha256 == hashlib.sha256(second.bytes).hexdigest() and (second.width, second.height) == (40, 48)


def test_decode_refuses_oversized_spans_before_reading_and_reports_vanished_files(tmp_path):
    huge = Sample(key="k", source="s", source_id="1", images=[ImageRef(span=(str(tmp_path / "nope"), 0, 10**9))])
    assert decode_sample(huge, DecodeConfig(max_bytes=1000)).reason == "image_too_large_bytes"
    gone = Sample(key="k", source="s", source_id="1", images=[ImageRef(span=(str(tmp_path / "nope"), 0, 100))])
    verdict = decode_sample(gone, DecodeConfig())
    assert verdict.reason == "read_error" and "nope" in verdict.detail


def test_writer_output_is_the_same_from_spans_and_from_bytes(tmp_path):
    samples = []
    for i in range(6):
        data = _jpeg(10 + i)
        ref = _spanned(tmp_path, data, f"f{i}")
        ref.sha256, ref.format = hashlib.sha256(data).hexdigest(), "jpeg"
        samples.append(Sample(key=f"k{i}", source="s", source_id=str(i), text=f"t{i}", images=[ref]))
    spanned = list(bucket_files(0, samples, [], samples_per_shard=4, bytes_per_shard=10**9))
    sizes = [estimated_size(s) for s in samples]
    for s in samples:
        attach_bytes(s)
    held = list(bucket_files(0, samples, [], samples_per_shard=4, bytes_per_shard=10**9))
    assert spanned == held and sizes == [estimated_size(s) for s in samples]
    samples[0].images[0].bytes = None
    open(samples[0].images[0].span[0], "r+b").write(b"XXXXXXXXXX")  # the input changed after decode
    with pytest.raises(SourceChanged):
        sample_members(samples[0])


def test_read_stage_emits_spans_for_local_tars_and_bytes_otherwise(tmp_path):
    """What leaves the read stage (and crosses the key shuffle): local uncompressed tars → spans, no bytes;
    gzip tars → the bytes themselves."""
    members = [("a.jpg", _jpeg(20)), ("a.txt", b"one"), ("b.jpg", _jpeg(21)), ("b.txt", b"two")]
    (tmp_path / "plain").mkdir()
    (tmp_path / "zipped").mkdir()
    _write_tar(tmp_path / "plain" / "x.tar", members)
    _write_tar(tmp_path / "zipped" / "y.tar.gz", members, compress=True)
    inputs = [InputConfig(path=str(tmp_path / "plain" / "x.tar")), InputConfig(path=str(tmp_path / "zipped" / "y.tar.gz"))]

    def check(samples):
        got = sorted((s.source, s.source_id, s.images[0].bytes is None, s.images[0].span is not None,
                      s.images[0].load_bytes() == dict(members)[f"{s.source_id}.jpg"]) for s in samples)
        assert got == [("plain", "a", True, True, True), ("plain", "b", True, True, True),
                       ("zipped", "a", False, False, True), ("zipped", "b", False, False, True)], got

    with beam.Pipeline() as pipeline:
        read = pipeline | ReadInputs(inputs)
        assert_that(read["kept"], check)


def test_manifest_image_paths_and_folders_are_spanned_embedded_bytes_are_not(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tmp_path / "jsonl"
    images.mkdir()
    (images / "p.jpg").write_bytes(_jpeg(30))
    (images / "rows.jsonl").write_text(json.dumps({"id": "r1", "caption": "c", "image_path": "p.jpg"}) + "\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "f1.jpg").write_bytes(_jpeg(31))
    (folder / "f1.txt").write_text("folder caption")
    embedded = tmp_path / "embedded"
    embedded.mkdir()
    pq.write_table(pa.table({"id": ["e1"], "caption": ["c"], "image_bytes": [_jpeg(32)]}), embedded / "rows.parquet")
    inputs = [InputConfig(path=str(images / "rows.jsonl")), InputConfig(path=str(folder)),
              InputConfig(path=str(embedded / "rows.parquet"))]

    def check(samples):
        got = sorted((s.source, s.images[0].bytes is None, s.images[0].span is not None) for s in samples)
        assert got == [("embedded", False, False), ("folder", True, True), ("jsonl", True, True)], got
        for s in samples:
            assert hashlib.sha256(s.images[0].load_bytes()).hexdigest()  # readable either way

    with beam.Pipeline() as pipeline:
        assert_that((pipeline | ReadInputs(inputs))["kept"], check)


def test_curated_output_is_byte_identical_with_and_without_spans(tmp_path, monkeypatch):
    """The same job, once moving spans and once carrying the bytes through every shuffle (spans disabled)."""
    from vlmloom.pipelines import sources
    from vlmloom.pipelines.curate import curate, load_config

    raw = tmp_path / "raw"
    raw.mkdir()
    members = []
    for i in range(12):
        members += [(f"s{i:02d}.jpg", _jpeg(40 + i, orientation=6 if i % 4 == 0 else 1)), (f"s{i:02d}.txt", f"c {i}".encode())]
    members += [("bad.jpg", b"not an image"), ("bad.txt", b"x")]
    _write_tar(raw / "a.tar", members)

    def run(out):
        config = load_config({"inputs": [{"path": str(raw / "a.tar")}], "output": str(out),
                              "disable": ["language", "heuristics"],
                              "output_format": {"samples_per_shard": 5, "buckets": 3}})
        return curate(config)

    run(tmp_path / "spans")
    monkeypatch.setattr(sources, "_reads_raw", lambda path: False)
    run(tmp_path / "carried")
    files = sorted(p.relative_to(tmp_path / "spans") for p in (tmp_path / "spans").rglob("*")
                   if p.is_file() and p.name not in ("report.json", "report.html"))
    assert any(str(f).startswith("shards/") for f in files)
    for rel in files:
        assert (tmp_path / "spans" / rel).read_bytes() == (tmp_path / "carried" / rel).read_bytes(), rel
