"""Dedup transforms on handmade records (TestPipeline): exact, pHash near-dup (transitive), MinHash text."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation.neardup import DedupConfig
from vlmloom.pipelines.dedup import ExactDedup, MinhashNearDedup, PhashNearDedup
from vlmloom.schemas.records import ImageRef, Sample


def _img(key, sha="", phash=None, w=100, h=100, text=None):
    s = Sample(key=key, source="s", source_id=key, text=text, images=[ImageRef(sha256=sha, width=w, height=h)])
    s.signals.update(width=w, height=h)
    if phash is not None:
        s.signals["phash"] = f"{phash:016x}"
    return s



def test_exact_dedup_keeps_largest_then_smallest_key():
    samples = [_img("b", "x", w=10), _img("a", "x", w=10), _img("c", "x", w=50), _img("d", "y"),
               Sample(key="t1", source="s", source_id="t1", kind="qa", text="same"),
               Sample(key="t0", source="s", source_id="t0", kind="qa", text="same")]
    with TestPipeline() as p:
        out = p | beam.Create(samples) | ExactDedup()
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["c", "d", "t0"]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to([("a", "exact_duplicate", "duplicate of c"), ("b", "exact_duplicate", "duplicate of c"),
                              ("t1", "exact_duplicate", "duplicate of t0")]), label="rejected")


def test_phash_clusters_are_transitive_and_distinct_images_survive():
    base = 0x0123456789ABCDEF
    a = base
    b = base ^ 0b111  # 3 bits from a
    c = b ^ (0b111 << 20)  # 3 bits from b, 6 from a
    d = c ^ (0b111 << 40)  # 3 from c, 9 from a: only linked through the chain
    far = base ^ ((1 << 64) - 1)  # 64 bits away
    samples = [_img("a", phash=a, w=100), _img("b", phash=b, w=200), _img("c", phash=c, w=200),
               _img("d", phash=d, w=50), _img("far", phash=far), _img("nohash")]
    samples += [_img(f"same{i:03d}", phash=0x1111, w=10) for i in range(300)]
    with TestPipeline() as p:
        out = p | beam.Create(samples) | PhashNearDedup(max_distance=4, max_bucket_pairs=10_000)
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["b", "far", "nohash", "same000"]),
                    label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.detail)),
                    equal_to([("a", "duplicate of b"), ("c", "duplicate of b"), ("d", "duplicate of b")]
                             + [(f"same{i:03d}", "duplicate of same000") for i in range(1, 300)]), label="rejected")


def test_minhash_text_near_duplicates():
    words = ("the quick brown fox jumps over the lazy dog while the cat sleeps on a warm red mat near the door "
             "of an old farmhouse where seven hens count their eggs every morning before the baker arrives with "
             "bread and the children walk slowly to the school beside the river under a pale blue sky").split()
    text = " ".join(words)
    variant = text.replace("warm", "cozy")
    other = " ".join(reversed(words)) + " and something else entirely different here"
    samples = [Sample(key="x1", source="s", source_id="1", text=text),
               Sample(key="x2", source="s", source_id="2", text=variant + " extra"),
               Sample(key="x3", source="s", source_id="3", text=other),
               Sample(key="x4", source="s", source_id="4", text="short caption"),
               Sample(key="x5", source="s", source_id="5", text="short caption")]
    with TestPipeline() as p:
        out = p | beam.Create(samples) | MinhashNearDedup(DedupConfig(minhash_threshold=0.7))
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["x2", "x3", "x4", "x5"]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to([("x1", "near_duplicate_text", "duplicate of x2")]), label="rejected")


def test_dedup_of_empty_input():
    with TestPipeline() as p:
        empty = p | beam.Create([], reshuffle=False).with_output_types(Sample)
        for i, t in enumerate([ExactDedup(), PhashNearDedup(4, 100), MinhashNearDedup(DedupConfig())]):
            out = empty | f"T{i}" >> t
            assert_that(out["kept"], equal_to([]), label=f"kept{i}")
            assert_that(out["rejected"], equal_to([]), label=f"rej{i}")
