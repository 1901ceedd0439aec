"""Kept samples wait for the writer in spill files on the local runners (pipelines/spill.py): same output, no
leftovers."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from vlmloom.pipelines import spill
from vlmloom.pipelines.curate import curate, load_config
from vlmloom.pipelines.sink import OutputConfig
from vlmloom.schemas.config import ConfigError


def _tar(path, n: int) -> None:
    """n records; every 5th repeats the image and caption of the one before (exact duplicates to decide)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            if i % 5 != 4:
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                text = f"record {i} a photo of " + " ".join(rng.choice(["red", "cat", "tree", "boat", "sky"], 12))
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            for name, data in ((f"r{i:04d}.png", buf.getvalue()), (f"r{i:04d}.txt", text.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _files(directory: str) -> dict[str, bytes]:
    out = {}
    for root, dirs, names in os.walk(directory):
        for name in names:
            if name not in ("report.json", "report.html") and "report_stats" not in root:
                path = os.path.join(root, name)
                out[os.path.relpath(path, directory)] = open(path, "rb").read()
    return out


def test_spilled_and_in_memory_sinks_write_the_same_bytes_and_leave_no_spill(tmp_path):
    _tar(tmp_path / "in.tar", 60)
    outputs = {}
    for mode in ("always", "never"):
        config = load_config({"inputs": [{"path": str(tmp_path / "in.tar"), "name": "s"}],
                              "output": str(tmp_path / mode), "disable": ["language"],
                              "heuristics": {"min_side": 16}, "output_format": {"spill": mode, "buckets": 3,
                                                                                 "samples_per_shard": 7}})
        report = curate(config, progress=False)
        assert report["accounting"]["kept"] == 48 and report["accounting"]["rejected"] == 12  # the 12 copies
        assert not os.path.exists(tmp_path / mode / spill.SPILL_DIR)
        outputs[mode] = _files(str(tmp_path / mode))
    assert sorted(outputs["always"]) == sorted(outputs["never"])
    assert any(name.startswith("shards/") for name in outputs["always"])
    assert outputs["always"] == outputs["never"]


def test_spill_modes():
    local = PipelineOptions(["--runner=DirectRunner"])
    assert spill.spills("auto", local, "/tmp/out") and spill.spills("auto", PipelineOptions([]), "/tmp/out")
    assert not spill.spills("auto", local, "gs://bucket/out")  # an object store: no spill files there
    assert not spill.spills("auto", PipelineOptions(["--runner=PortableRunner"]), "/tmp/out")
    assert not spill.spills("auto", PipelineOptions(["--runner=DataflowRunner"]), "/tmp/out")
    assert spill.spills("always", PipelineOptions(["--runner=DataflowRunner"]), "gs://bucket/out")
    assert not spill.spills("never", local, "/tmp/out")
    with pytest.raises(ConfigError, match="spill"):
        OutputConfig(spill="sometimes").validate()


def test_read_spilled_reads_in_file_order_and_refuses_a_short_file(tmp_path):
    directory = tmp_path / spill.SPILL_DIR
    directory.mkdir()
    values = []
    for name in (b"b" * 16, b"a" * 16):
        offset, spans = 0, []
        with open(directory / (name.decode() + ".pkl"), "wb") as fh:
            for i in range(3):
                data = pickle.dumps((name, i))
                fh.write(data)
                spans.append((offset, len(data)))
                offset += len(data)
        values += [spill.spans(name, spans[2:]), spill.spans(name, reversed(spans[:2]))]  # two bundles' lists
    got = [pickle.loads(d) for d in spill.read_spilled(str(directory), reversed(values))]
    assert got == [(b"a" * 16, i) for i in range(3)] + [(b"b" * 16, i) for i in range(3)]
    with open(directory / ("a" * 16 + ".pkl"), "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(IOError, match="spill file a{16}"):
        list(spill.read_spilled(str(directory), values))


def _run_bundle(dofn, samples):
    """What a runner does with one bundle of a DoFn: its outputs from process() and from finish_bundle()."""
    dofn.start_bundle()
    out = [o for s in samples for o in dofn.process(s)]
    out += [wv.value for wv in dofn.finish_bundle() or ()]
    return out


def _samples(n: int, text_chars: int = 10):
    from vlmloom.schemas.records import Sample

    return [Sample(key=f"k{i:05d}", source="s", source_id=str(i), text=str(i) * text_chars) for i in range(n)]


def test_runs_name_many_samples_each_and_read_back_in_order(tmp_path, monkeypatch):
    samples = _samples(2 * spill.RUN_SAMPLES + 3)
    refs = _run_bundle(spill._SpillDoFn(str(tmp_path), "runs"), samples)
    assert len(refs) == 3  # two full runs and the rest, at the bundle's end
    reader = spill.SpillReader(str(tmp_path))
    assert [s.key for ref in refs for s in reader.samples(ref)] == [s.key for s in samples]
    assert [s.key for s in reader.samples(refs[1])] == [s.key for s in samples[spill.RUN_SAMPLES:2 * spill.RUN_SAMPLES]]
    with pytest.raises(ValueError, match="one sample"):
        reader.load(refs[0])
    reader.close()
    # a run also ends at RUN_BYTES, so that big samples (image bytes not yet released) make short runs
    monkeypatch.setattr(spill, "RUN_BYTES", 1000)
    big = _samples(10, text_chars=300)
    refs = _run_bundle(spill._SpillDoFn(str(tmp_path), "runs"), big)
    sizes = [len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in big]
    assert 300 < sizes[0] < 1000
    runs, run = 0, 0
    for size in sizes:  # a run ends at the sample that takes it to RUN_BYTES
        run += size
        if run >= 1000:
            runs, run = runs + 1, 0
    assert len(refs) == runs + (run > 0) and len(refs) >= 3
    reader = spill.SpillReader(str(tmp_path))
    assert [s.key for ref in refs for s in reader.samples(ref)] == [s.key for s in big]
    # a run whose file ends early is an error that names the file, not a silent short read
    name = refs[-1][:16].decode()
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(path.read_bytes()[:-5])
    reader = spill.SpillReader(str(tmp_path))
    with pytest.raises(IOError, match=f"spill file {name}"):
        list(reader.samples(refs[-1]))


def test_bucket_lists_carry_each_bundles_samples_once(tmp_path):
    samples = _samples(spill.RUN_SAMPLES + 40)

    def bucket(sample):
        return 0 if int(sample.source_id) < spill.RUN_SAMPLES + 10 else 1

    out = _run_bundle(spill._SpillDoFn(str(tmp_path), "buckets", bucket), samples)
    # one list per bucket at the bundle's end, plus the lists that reached RUN_SAMPLES on the way
    assert len(out) == 3 and sorted(b for b, _ in out) == [0, 0, 1]
    for b in (0, 1):
        got = [pickle.loads(d).key for d in spill.read_spilled(str(tmp_path), [v for k, v in out if k == b])]
        assert got == [s.key for s in samples if bucket(s) == b]
    keyed = _run_bundle(spill._SpillDoFn(str(tmp_path), "keyed", lambda s: s.key), samples[:5])
    reader = spill.SpillReader(str(tmp_path))
    assert [(k, pickle.loads(reader.load(ref)).key) for k, ref in keyed] == [(s.key, s.key) for s in samples[:5]]
