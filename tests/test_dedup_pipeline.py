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
        # d is in b's cluster (through c) but 6 bits from b, the representative: clusters chain, decisions do not.
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["b", "d", "far", "nohash", "same000"]),
                    label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.detail)),
                    equal_to([("a", "duplicate of b"), ("c", "duplicate of b")]
                             + [(f"same{i:03d}", "duplicate of same000") for i in range(1, 300)]), label="rejected")


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


def test_phash_never_drops_past_the_threshold_from_the_kept_representative():
    """The MNIST case (issue 20): A–B 4 bits, B–C 6 bits, A–C 10 bits, threshold 6, C the best image. One cluster
    through B, but A is 10 bits from C, the record kept: A is kept too, and counted."""
    c = 0x0F0F_0F0F_0F0F_0F0F
    b = c ^ 0b111111  # 6 bits from c
    a = b ^ (0b1111 << 32)  # 4 bits from b, 10 from c
    assert bin(a ^ c).count("1") == 10
    samples = [_img("a_one", phash=a, w=28), _img("b", phash=b, w=28), _img("c_nine", phash=c, w=56)]
    p = TestPipeline()
    out = p | beam.Create(samples) | PhashNearDedup(max_distance=6, max_bucket_pairs=100)
    assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["a_one", "c_nine"]), label="kept")
    assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                equal_to([("b", "near_duplicate_image", "duplicate of c_nine")]), label="rejected")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "phash_chain_kept") == 1


def test_minhash_never_drops_past_the_threshold_from_the_kept_representative():
    """Texts x–y and y–z near (Jaccard >= 0.6), x–z not; z the longest, so the representative: x is kept."""
    words = [f"w{i}" for i in range(60)]
    x = " ".join(words)
    y = " ".join(words[10:] + [f"x{i}" for i in range(10)])
    z = " ".join(words[20:] + [f"x{i}" for i in range(10)] + [f"ylonger{i}" for i in range(12)])
    sig = {k: hashing.minhash_signature(t, num_perm=256, ngram=1) for k, t in {"x": x, "y": y, "z": z}.items()}
    jaccard = lambda a, b: float(np.mean(sig[a] == sig[b]))
    assert jaccard("x", "y") >= 0.6 and jaccard("y", "z") >= 0.6 and jaccard("x", "z") < 0.6
    samples = [Sample(key=k, source="s", source_id=k, kind="qa", text=t) for k, t in {"x": x, "y": y, "z": z}.items()]
    config = DedupConfig(minhash_threshold=0.6, minhash_num_perm=256, minhash_bands=64)
    p = TestPipeline()
    out = p | beam.Create(samples) | MinhashNearDedup(config)
    assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["x", "z"]), label="kept")
    assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.detail)),
                equal_to([("y", "duplicate of z")]), label="rejected")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "minhash_chain_kept") == 1


def test_exact_dedup_reads_each_kind_whole():
    """Several questions about one image are different records, so are two rows that differ only in their image;
    two captions of one image are one image's duplicates (schemas.kinds)."""
    from vlmloom.schemas.records import Message

    def qa(key, sha, question):
        s = _img(key, sha)
        s.kind = "qa"
        s.messages = [Message("user", question), Message("assistant", "yes")]
        return s

    samples = [qa("q1", "img1", "is it red?"), qa("q2", "img1", "is it round?"), qa("q3", "img2", "is it red?"),
               qa("q4", "img1", "is it red?"),
               _img("cap1", "img3", text="a red ball"), _img("cap2", "img3", text="a ball, red")]
    with TestPipeline() as p:
        out = p | beam.Create(samples) | ExactDedup()
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["q1", "q2", "q3", "cap2"]),
                    label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.detail)),
                    equal_to([("q4", "duplicate of q1"), ("cap1", "duplicate of cap2")]), label="rejected")


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


# --- pair-aware text dedup, the shared representative rule, bucket caps (issue 10 §3) -------------------
import hashlib
import io

import imagehash
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image

from vlmloom.curation import hashing
from vlmloom.curation.neardup import minhash_bucket_edges, verified_hex_pairs

CLICK = "Click to enlarge this photograph from our gallery of pictures taken during the long summer holidays"
AGAIN = ("Exactly the same picture again shown here once more for your convenience in a slightly larger "
         "frame with the usual copyright notice of the original photographer")


def _encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _record(key: str, image: Image.Image, text: str) -> Sample:
    data = _encoded(image)
    sample = Sample(key=key, source="s", source_id=key, text=text,
                    images=[ImageRef(sha256=hashlib.sha256(data).hexdigest(), width=image.width,
                                     height=image.height, format="png", bytes=data)])
    sample.signals.update(width=image.width, height=image.height, phash=str(imagehash.phash(image.convert("L"))))
    return sample


def _smooth_image(seed: int) -> Image.Image:
    grid = (np.random.default_rng(seed).random((4, 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(grid).resize((256, 256), Image.BICUBIC)


def _crop_5_percent(image: Image.Image) -> Image.Image:
    d = round(image.width * 0.0125)  # 2.5% of each side: 5% of the area
    return image.crop((d, d, image.width - d, image.height - d))




def test_templated_captions_never_remove_distinct_images_and_the_original_survives():
    """The issue's measured scenario, small: 40 distinct images; 30 get an exact copy captioned "Click to
    enlarge …" and a 5%-crop variant captioned "Exactly the same picture again …" (longer than the
    original's caption); 10 more distinct images carry the templated captions themselves."""
    config = DedupConfig(phash_max_distance=12, minhash_threshold=0.7)
    # Seeds whose images (and crops) are pairwise farther apart than the pHash distance (checked below).
    seeds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27,
             28, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 42]
    originals = {i: _smooth_image(seed) for i, seed in enumerate(seeds)}
    crops = {i: _crop_5_percent(im) for i, im in originals.items()}
    hashes = {i: imagehash.phash(im.convert("L")) for i, im in originals.items()}
    crop_hashes = {i: imagehash.phash(im.convert("L")) for i, im in crops.items()}
    # Preconditions of the fixture: distinct images are far apart (crops included), each crop is near its original.
    k = config.phash_max_distance
    assert all(min(hashes[i] - hashes[j], hashes[i] - crop_hashes[j], crop_hashes[i] - crop_hashes[j]) > k
               for i in hashes for j in hashes if i != j)
    assert max(hashes[i] - crop_hashes[i] for i in hashes) <= k
    samples, original_sha = [], {}
    for i, image in originals.items():
        caption = (f"Photograph number {i} of the old harbour at dawn with the fishing boats coming home and the "
                   "gulls circling low over the grey water")  # longer than the "Click to enlarge" template
        if i >= 30:
            caption = CLICK if i % 2 else AGAIN
        original = _record(f"img{i:02d}_original", image, caption)
        original_sha[i] = original.images[0].sha256
        samples.append(original)
        if i < 30:
            samples.append(_record(f"img{i:02d}_a_copy", image, CLICK))  # sorts before the original
            samples.append(_record(f"img{i:02d}_b_crop", crops[i], AGAIN))
    with TestPipeline() as p:
        kept = p | beam.Create(samples)
        for name, stage in [("exact", ExactDedup()),
                            ("phash", PhashNearDedup(config.phash_max_distance, config.max_bucket_pairs)),
                            ("minhash", MinhashNearDedup(config))]:
            kept = (kept | name >> stage)["kept"]

        def check(survivors):
            by_image = {}
            for s in survivors:
                by_image.setdefault(s.key[:5], []).append(s)
            assert sorted(by_image) == sorted(f"img{i:02d}" for i in range(40)), "a distinct image vanished"
            for prefix, group in by_image.items():
                assert len(group) == 1, f"{prefix}: {[s.key for s in group]} all kept"
                assert group[0].images[0].sha256 == original_sha[int(prefix[3:])], f"{prefix}: {group[0].key} kept"
                # Among byte-identical copies, the longer (original) caption wins.
                assert group[0].key == f"{prefix}_original"

        assert_that(kept, check)


def test_text_near_duplicates_need_near_images_text_only_records_do_not():
    text = " ".join(f"word{i}" for i in range(30))
    far_a, far_b = _smooth_image(1), _smooth_image(2)
    samples = [_record("far_a", far_a, text), _record("far_b", far_b, text),
               _record("near_a", _smooth_image(3), text + " extra"), _record("near_b", _smooth_image(3), text),
               Sample(key="doc_a", source="s", source_id="doc_a", kind="qa", text=text),
               Sample(key="doc_b", source="s", source_id="doc_b", kind="qa", text=text + " extra")]
    samples[3].images[0] = ImageRef(sha256=samples[2].images[0].sha256, width=256, height=256)  # same image bytes
    with TestPipeline() as p:
        out = p | beam.Create(samples) | MinhashNearDedup(DedupConfig(minhash_threshold=0.7))
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["far_a", "far_b", "near_a", "doc_b"]),
                    label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.detail)),
                    equal_to([("near_b", "duplicate of near_a"), ("doc_a", "duplicate of doc_b")]), label="rejected")


def test_minhash_bucket_cap_compares_the_rest_with_the_anchor_and_is_counted():
    texts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(40)) for i in range(6)]
    members = [(f"k{i}", hashing.minhash_signature(t), None) for i, t in enumerate(texts)]
    base = hashing.minhash_signature(texts[0])
    members.append(("k_dup", base.copy(), None))  # identical to k0: one node, no comparison
    members.append(("k_near", np.where(np.arange(128) < 10, np.uint64(1), base), None))  # ~92% like k0
    full = minhash_bucket_edges(members, 0.8, max_pairs=10_000, image_max_distance=6)
    capped = minhash_bucket_edges(members, 0.8, max_pairs=1, image_max_distance=6)
    assert not full.capped and capped.capped
    # Capped, every member is still compared with the first (anchor) member: k_dup and k_near join k0.
    from vlmloom.curation.components import connected_components
    labels = connected_components(capped.edges, 64)[0]
    assert labels["k_dup"] == labels["k_near"] == labels["k0"] == "k0"

    p = TestPipeline()
    samples = [Sample(key=k, source="s", source_id=k, kind="qa", text=t) for k, t in
               [("k0", texts[0]), ("k1", texts[1]), ("k2", texts[0] + " tail")]]
    _ = p | beam.Create(samples) | MinhashNearDedup(DedupConfig(minhash_bands=128, max_bucket_pairs=1))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("minhash_bucket_capped"))["counters"]
    assert sum(c.committed for c in counters) >= 1


def test_phash_bucket_cap_emits_stars_with_the_same_clusters_and_is_counted():
    base = 0x0F0F_0000_FFFF_0000
    bucket = [f"{base ^ (1 << b):016x}" for b in range(0, 8)] + [f"{base ^ (3 << b):016x}" for b in range(20, 26)]
    full = verified_hex_pairs(bucket, 4, max_pairs=10_000)
    capped = verified_hex_pairs(bucket, 4, max_pairs=5)
    assert not full.capped and capped.capped and len(full.edges) > 5
    assert len(capped.edges) <= len(bucket) - 1

    def clusters(edges):
        from vlmloom.curation.components import connected_components
        return connected_components(edges, 64)[0]

    assert clusters(capped.edges) == clusters(full.edges)
    p = TestPipeline()
    samples = [_img(f"k{i}", phash=int(h, 16)) for i, h in enumerate(bucket)]
    _ = p | beam.Create(samples) | PhashNearDedup(4, max_bucket_pairs=5)
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("phash_bucket_capped"))["counters"]
    assert sum(c.committed for c in counters) >= 1


def test_each_stage_reads_only_what_the_stages_before_it_kept():
    """One decision per dropped record, from the first stage that drops it: exact's groups pass on only the rows
    they keep, and pHash's decisions are taken out of MinHash's rows in MinHash's own join (issue 22: no survivors
    join of their own). p2 is both a pHash near-duplicate and a text near-duplicate of p1; e2 is an exact copy of e1
    (whose text and image would also match in the later stages); t1/t2 are text-only near-duplicates (the longer text stays)."""
    from vlmloom.pipelines.dedup import DedupDecisions

    words = AGAIN + " and a few more words"
    samples = [_img("e1", "x", phash=0xF0F0F0F0F0F0F0F0, w=300, text=words + " e"),
               _img("e2", "x", phash=0xF0F0F0F0F0F0F0F0, w=300, text=words + " e"),
               _img("p1", "p", phash=0x0123456789ABCDEF, w=200, text=words),
               _img("p2", "q", phash=0x0123456789ABCDEF ^ 0b11, w=100, text=words),
               Sample(key="t1", source="s", source_id="t1", text=AGAIN + " first"),
               Sample(key="t2", source="s", source_id="t2", text=AGAIN + " second")]
    config = DedupConfig(exact=True, phash=True, minhash=True, minhash_min_words=3)
    with TestPipeline() as p:
        decisions = p | beam.Create(samples) | DedupDecisions(config)
        assert_that(decisions | beam.MapTuple(lambda key, decision: (key, decision[0])),
                    equal_to([("e2", "exact_dedup"), ("p2", "near_dup_image"), ("t1", "near_dup_text")]))
