"""Kept samples wait for the writer in spill files on the local runners (pipelines/spill.py): same output, no leftovers."""
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
    refs = []
    for name in (b"b" * 16, b"a" * 16):
        offset = 0
        with open(directory / (name.decode() + ".pkl"), "wb") as fh:
            for i in range(3):
                data = pickle.dumps((name, i))
                fh.write(data)
                refs.append(spill.reference(name, offset, len(data)))
                offset += len(data)
    got = [pickle.loads(d) for d in spill.read_spilled(str(directory), reversed(refs))]
    assert got == [(b"a" * 16, i) for i in range(3)] + [(b"b" * 16, i) for i in range(3)]
    with open(directory / ("a" * 16 + ".pkl"), "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(IOError, match="spill file a{16}"):
        list(spill.read_spilled(str(directory), refs))
