"""The curate graph never gathers per-record data into one worker or broadcasts it to every worker.

Builds (does not run) the pipeline for a config with every stage on — model stages with tiny random
models — and walks every transform: each side input (AsSingleton/AsDict/AsList/AsIter views) and each
global combine (CombineGlobally, and what ToList/Top/Count.Globally/Sample expand to) must be on the
allow-list below, which names each one and why its size is bounded independently of the corpus. A new
stage that broadcasts or gathers per-record data fails here: route its decisions by a keyed join
(CoGroupByKey) instead, or, for a truly bounded aggregate, add it to the allow-list with the bound.
"""
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
from typing import Tuple

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from vlmloom.curation import neardup
from vlmloom.demo.models import save_random_clip
from vlmloom.pipelines.curate import build_pipeline, load_config
from vlmloom.pipelines.shuffle import KeyedSamples
from vlmloom.schemas.records import Sample

# (full-label pattern, kind, why it is bounded). Kind: "side_input" or "global_combine".
ALLOWED = [
    (r"/(CountTotal|CountBad)/CombineGlobally\(sum\)$", "global_combine",
     "with_exception_handling's error threshold (RunInference, download's fetch): two integer counts per stage"),
    (r"/Map\(check_threshold\)$", "side_input", "with_exception_handling's error threshold: the two counts"),
    (r"ErrorBudget/Total$", "global_combine",
     "a stage's error budget (stages.ErrorBudget): (records, errors), two integers per bundle, summed"),
    (r"^clip/Cutoff$", "global_combine",
     "CLIP top-fraction cutoff: a histogram of scores binned to 1e-4 (<= 20,001 bins), extracted to one float"),
    (r"^clip/Cutoff/InjectDefault$", "side_input", "CombineGlobally's own default: its one output, the cutoff"),
    (r"^clip/TopFraction/ParDo\(RouteDoFn\)", "side_input", "the scalar CLIP cutoff (AsSingleton of one float)"),
    (r"^concepts/Balance/ParDo\(RouteDoFn\)", "side_input",
     "per-concept match counts (AsDict), bounded by the concept vocabulary, not the corpus"),
    (r"^UniqueKeys/Apply/ParDo\(_ApplyKeyDecision\)$", "side_input",
     "key-uniqueness decisions (AsDict) of the records whose key others share only: none in most corpora, one "
     "~200-byte tuple per such record otherwise (pipelines/keys.py); never a sample"),
]


class _Collect(PipelineVisitor):
    def __init__(self):
        self.found: list[tuple[str, str, str]] = []

    def visit_transform(self, applied):
        label = applied.full_label
        for side in applied.side_inputs:
            self.found.append((label, "side_input", type(side).__name__))
        if isinstance(applied.transform, beam.CombineGlobally):
            fn = getattr(applied.transform, "fn", None)
            self.found.append((label, "global_combine", type(fn).__name__))

    enter_composite_transform = visit_transform


def _allowed(label: str, kind: str) -> str | None:
    for pattern, allowed_kind, reason in ALLOWED:
        if allowed_kind == kind and re.search(pattern, label):
            return reason
    return None


def _every_stage_config(tmp_path) -> dict:
    clip_dir = save_random_clip(str(tmp_path / "clip"), "tiny", "clip")
    manifest = tmp_path / "in.jsonl"
    manifest.write_text(json.dumps({"id": "a", "text": "a caption", "image_path": "a.png"}) + "\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "q", "text": "a benchmark question"}) + "\n")
    return {
        "inputs": [{"path": str(manifest)}],
        "output": str(tmp_path / "out"),
        "dedup": {"exact": True, "phash": True, "minhash": True,
                  "embedding": {"enabled": True, "visual_model_path": clip_dir, "text_backend": "hashing"},
                  "semantic_text": {"enabled": True, "backend": "hashing"}},
        "models": {
            "clip": {"enabled": True, "model_path": clip_dir, "top_fraction": 0.5},
            "concepts": {"enabled": True},
            "contamination": {"enabled": True, "benchmarks": [{"name": "b", "path": str(bench), "format": "auto"}]},
            "recaption": {"enabled": True, "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
            "ocr": {"enabled": True},
            "grounding": {"enabled": True},
        },
    }


def _graph(tmp_path):
    config = load_config(_every_stage_config(tmp_path))
    pipeline = beam.Pipeline()
    stages = build_pipeline(pipeline, config, str(tmp_path / "out"))
    return stages, _walk(pipeline)


def _walk(pipeline) -> list:
    """What _Collect finds in a graph that is built, never run."""
    visitor = _Collect()
    pipeline.visit(visitor)
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)  # Beam removes it at the end of run(); none here
    return visitor.found


def test_every_stage_is_on(tmp_path):
    stages, _ = _graph(tmp_path)
    assert stages[1:] == ["decode", "heuristics", "language", "documents", "exact_dedup", "near_dup_image", "near_dup_text",
                          "near_dup_embedding", "near_dup_semantic_text", "clip", "image_relevance", "concepts",
                          "contamination", "recaption", "ocr", "grounding", "renderable"]


def test_no_side_input_or_global_combine_carries_per_record_data(tmp_path):
    _, found = _graph(tmp_path)
    offending = [(label, kind, what) for label, kind, what in found if _allowed(label, kind) is None]
    assert not offending, ("per-record data broadcast or gathered into one worker (use a keyed join, or add a "
                           f"bounded aggregate to ALLOWED with its bound): {offending}")
    # The allow-list names real transforms: each entry matches something in the graph.
    for pattern, kind, reason in ALLOWED:
        assert any(kind == k and re.search(pattern, label) for label, k, _ in found), (pattern, kind)


def test_the_walk_detects_a_broadcast(tmp_path):
    """The check can fail: a stage routing by an AsDict of per-record decisions is caught."""
    pipeline = beam.Pipeline()
    samples = pipeline | "Create" >> beam.Create([("a", 1)])
    decisions = samples | "Decisions" >> beam.Map(lambda kv: kv)
    _ = samples | "near_dup_text/Route" >> beam.Map(lambda kv, d: kv, beam.pvalue.AsDict(decisions))
    _ = samples | "Everything" >> beam.combiners.ToList()
    offending = {(label, kind) for label, kind, _ in _walk(pipeline) if _allowed(label, kind) is None}
    assert ("near_dup_text/Route", "side_input") in offending
    assert any(kind == "global_combine" and label.startswith("Everything") for label, kind in offending)


# Stages that only decide: what crosses their shuffles must be metadata (issue 22). Their decisions meet the samples
# once, where the samples are grouped anyway (the sink's per-bucket group, or ApplyDedup before the model stages).
DECIDING_STAGES = ("dedup/", "UniqueKeys/")


# Packed metadata a deciding shuffle may carry, and the transforms allowed to produce it (full-label pattern): a
# bytes type of its own, so that plain `bytes` (image bytes, pickled samples) still fails the check below, and a
# producer check, so that nothing else is smuggled through the packed type.
PACKED_METADATA = {
    neardup.Packed: (r"^dedup/Decisions/near_dup_text/"
                     r"(Signature|PackSignatures|PackRows|PackBands|PackMembers|BucketMembers|Verify/ToPairs)(/|$)",
                     "MinHash signature values (or a shorter text they come from), digests, image hashes, sizes "
                     "and keys (curation/neardup.py packing)"),
}


def _types_in(hint) -> list[type]:
    """The classes a (Beam) type hint names, nested ones included."""
    if isinstance(hint, type):
        return [hint]
    found = []
    for attr in ("tuple_types", "union_types"):
        for inner in getattr(hint, attr, None) or ():
            found += _types_in(inner)
    for attr in ("inner_type", "key_type", "value_type"):
        if getattr(hint, attr, None) is not None:
            found += _types_in(getattr(hint, attr))
    return found


def _carries_samples_or_bytes(label: str, hint, producer: str) -> bool:
    for cls in _types_in(hint):
        if cls in PACKED_METADATA:
            if not re.search(PACKED_METADATA[cls][0], producer):
                return True
        elif issubclass(cls, (bytes, bytearray, memoryview, Sample)):
            return True
    return "Sample" in str(hint)


class _Shuffles(PipelineVisitor):
    """(full label, element type, producing transform) of what every GroupByKey and CoGroupByKey under
    DECIDING_STAGES reads."""

    def __init__(self):
        self.found: list[tuple[str, object, str]] = []

    def visit_transform(self, applied):
        label = applied.full_label
        if not label.startswith(DECIDING_STAGES) or "CoGroupByKeyImpl" in label:
            return  # a CoGroupByKey's own grouping reads a union of its inputs: the inputs are checked instead
        if isinstance(applied.transform, (beam.GroupByKey, beam.CoGroupByKey)):
            for pcoll in applied.inputs:
                self.found.append((label, pcoll.element_type, pcoll.producer.full_label if pcoll.producer else ""))

    enter_composite_transform = visit_transform


def test_no_deciding_stage_shuffles_samples_or_bytes(tmp_path):
    config = load_config(_every_stage_config(tmp_path))
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, config, str(tmp_path / "out"))
    visitor = _Shuffles()
    pipeline.visit(visitor)
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
    labels = {label for label, _, _ in visitor.found}
    for stage in ("exact_dedup", "near_dup_image", "near_dup_text"):  # the walk sees every dedup stage's shuffles
        assert any(f"/{stage}/" in label for label in labels), stage
    assert "UniqueKeys/GroupRows" in labels  # ... and the key stage's
    untyped = [(label, str(hint)) for label, hint, _ in visitor.found if "Any" in str(hint)]
    assert not untyped, f"shuffles of undeclared element types (declare them so that this check can read them): {untyped}"
    carrying = [(label, str(hint), producer) for label, hint, producer in visitor.found
                if _carries_samples_or_bytes(label, hint, producer)]
    assert not carrying, f"a deciding stage shuffles samples or bytes: {carrying}"
    # Packed metadata is where it is meant to be, and the check reads it (each entry names a real producer).
    for cls, (pattern, _) in PACKED_METADATA.items():
        assert any(cls in _types_in(hint) and re.search(pattern, producer) for _, hint, producer in visitor.found)


def test_the_shuffle_check_catches_bytes_samples_and_stray_packed_values():
    """Plain bytes, a bytes subclass, a Sample, or a packed value from an unlisted transform: each one fails."""
    class Smuggled(bytes):
        pass

    for name, hint, make in [("raw", Tuple[str, bytes], lambda kv: kv), ("sub", Tuple[str, Smuggled], lambda kv: kv),
                             ("sample", Tuple[str, Sample], lambda kv: kv),
                             ("packed", Tuple[str, neardup.Packed], lambda kv: kv)]:
        pipeline = beam.Pipeline()
        made = (pipeline | "Create" >> beam.Create([("a", b"x")])
                | "dedup/Decisions/near_dup_text/Stray" >> beam.Map(make).with_output_types(hint))
        _ = made | "dedup/Decisions/near_dup_text/Group" >> beam.GroupByKey()
        visitor = _Shuffles()
        pipeline.visit(visitor)
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        assert [label for label, hint_, producer in visitor.found if _carries_samples_or_bytes(label, hint_, producer)
                ] == ["dedup/Decisions/near_dup_text/Group"], name


def _carries_samples(pcoll) -> bool:
    """Whole samples: typed as Sample, or pickled by shuffle.KeyedSamples (through any Flatten before the group)."""
    if "Sample" in str(pcoll.element_type):
        return True
    producer = pcoll.producer
    if isinstance(producer.transform, beam.Flatten):
        return any(_carries_samples(p) for p in producer.inputs)
    while producer is not None:
        if isinstance(producer.transform, KeyedSamples):
            return True
        producer = producer.parent
    return False


def _sample_shuffles(config: dict, tmp_path) -> list[str]:
    """Labels of the GroupByKeys of a built curate graph whose input is samples: pickled (`bytes` values) or typed."""
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, load_config(config), str(tmp_path / "out"))
    found = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, applied):
            if isinstance(applied.transform, beam.GroupByKey):
                found.extend(applied.full_label for p in applied.inputs if _carries_samples(p))

        enter_composite_transform = visit_transform

    pipeline.visit(Visitor())
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
    return sorted(found)


def test_the_default_job_groups_whole_samples_once_in_the_sink(tmp_path):
    """Key uniqueness decides on rows and dedup's decisions meet the samples in the sink: with only per-record
    stages (`renderable`) after dedup, the one grouping of whole samples is the sink's per-bucket group; model
    stages after dedup still join the deduplicated samples once (ApplyDedup)."""
    config = _every_stage_config(tmp_path)
    models = config.pop("models")
    in_memory = {**config, "output_format": {"spill": "never"}}
    assert _sample_shuffles(in_memory, tmp_path) == ["Write/GroupByBucket"]
    # the expensive per-sample models regroup the samples they run on, so that every worker gets a share
    spread = ["grounding/GroupByKeyHash", "ocr/GroupByKeyHash", "recaption/GroupByKeyHash"]
    assert _sample_shuffles({**in_memory, "models": models}, tmp_path) == sorted(
        ["ApplyDedup/GroupByKey", "Write/GroupByBucket"] + spread)
    # On the local runner the samples wait for their writer and for dedup's decisions in spill files
    # (pipelines/spill.py): those groupings carry references, and no grouping holds a whole sample
    assert _sample_shuffles(config, tmp_path) == []
    assert _sample_shuffles({**config, "models": models}, tmp_path) == spread


def test_the_default_local_job_materialises_no_flatten_of_samples(tmp_path):
    """The local runner materialises every multi-input Flatten (each input written to a buffer, then read): in the
    default job on the local runner, samples that wait (for key uniqueness's decisions, the documents stage's
    removals, dedup's decisions, their bucket's writer) wait as spill references, so no Flatten holds a sample."""
    config = _every_stage_config(tmp_path)
    config.pop("models")
    found = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, applied):
            if isinstance(applied.transform, beam.Flatten) and len(applied.inputs) > 1:
                found.extend(applied.full_label for p in applied.inputs if _carries_samples(p))

    for spill_mode, expected in (("auto", []), ("never", ["documents/WithOthers"])):
        pipeline = beam.Pipeline()
        build_pipeline(pipeline, load_config({**config, "output_format": {"spill": spill_mode}}),
                       str(tmp_path / "out"))
        found.clear()
        pipeline.visit(Visitor())
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        assert sorted(set(found)) == expected, spill_mode


_UNPICKLE_STEPS = """
import pickle, sys
import apache_beam.runners.worker.sdk_worker_main  # what a worker process has imported before its first bundle
from apache_beam.internal import pickler
before = set(sys.modules)
for payload in pickle.load(open(sys.argv[1], "rb")):
    pickler.loads(payload)
print(" ".join(sorted(m for m in set(sys.modules) - before if m.startswith("vlmloom."))))
"""


def _worker_imports(pipeline, tmp_path) -> tuple[int, set[str]]:
    """(steps, the vlmloom modules a fresh worker process imports to unpickle every step (DoFn) of `pipeline`)."""
    proto = pipeline.to_runner_api()
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
    payloads = [beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
                for t in proto.components.transforms.values() if t.spec.urn == common_urns.primitives.PAR_DO.urn]
    payloads = [p for p in payloads if p]  # (Beam's own combiners carry no payload)
    path = tmp_path / "steps.pkl"
    path.write_bytes(pickle.dumps(payloads))
    out = subprocess.run([sys.executable, "-c", _UNPICKLE_STEPS, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return len(payloads), set(out.split())


def test_a_worker_imports_the_steps_it_runs_not_the_job_builder(tmp_path):
    """A multi-process or cluster worker unpickles each step it runs; a step whose callable lives in
    pipelines/curate.py makes it import the whole job builder and every stage's module (dedup, download, model
    stages, report.html: ~0.2 s of each worker's start-up). The default job's steps reference only their own."""
    with tarfile.open(tmp_path / "in.tar", "w") as tar:  # a webdataset input: the graph is built, never run
        member = tarfile.TarInfo("a.txt")
        member.size = 9
        tar.addfile(member, io.BytesIO(b"a caption"))
    config = load_config({"inputs": [{"path": str(tmp_path / "*.tar")}], "output": str(tmp_path / "out")})
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, config, str(tmp_path / "out"))
    steps, modules = _worker_imports(pipeline, tmp_path)
    assert steps > 20 and "vlmloom.curation.decode" in modules and "vlmloom.pipelines.sink" in modules, modules
    heavy = {"vlmloom.pipelines.curate", "vlmloom.pipelines.report_html", "vlmloom.pipelines.download",
             "vlmloom.pipelines.model_stages", "vlmloom.curation.download"}
    assert not modules & heavy, sorted(modules & heavy)
