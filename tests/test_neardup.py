"""Near-duplicate logic: hashes, pHash band keys, verified pairs, union-find, clustering, MinHash text dedup."""
from __future__ import annotations

import io
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash
from PIL import Image, ImageDraw, ImageEnhance

from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.curation.hashing import (
    EMPTY_MINHASH_VALUE,
    estimated_jaccard,
    hamming,
    minhash_band_keys,
    minhash_signature,
    phash_int,
    sha256_hex,
    text_shingles,
)
from vlmloom.curation.neardup import (
    BRUTE_FORCE_MAX,
    UnionFind,
    choose_representative,
    cluster_minhash,
    cluster_phashes,
    phash_band_keys,
    verified_pairs,
)
from vlmloom.schemas.records import ImageRef, Sample


def brute_force_edges(values: list[int], k: int) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for i, a in enumerate(values) for b in values[i + 1:] if hamming(a, b) <= k}


def components_of(values, edges) -> dict:
    union = UnionFind(values)
    for a, b in edges:
        union.union(a, b)
    return union.components()


def flip(value: int, bits) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def random_hashes_with_neighbours(seed: int, count: int, planted: int, max_flips: int) -> list[int]:
    rng = random.Random(seed)
    values = {rng.getrandbits(64) for _ in range(count)}
    for base in sorted(values)[:planted]:
        for _ in range(3):
            values.add(flip(base, rng.sample(range(64), rng.randint(1, max_flips))))
    return sorted(values)


# --- hashing ----------------------------------------------------------------------------------------
def test_small_hash_helpers():
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert phash_int("ffffffffffffffff") == 2**64 - 1 and phash_int("0000000000000010") == 16
    with pytest.raises(ValueError, match="16 hex"):
        phash_int("abc")
    assert hamming(0b1011, 0b0001) == 2 and hamming(0, 2**64 - 1) == 64


def test_text_shingles_normalise_words_and_cjk():
    assert text_shingles("The  CAT, sat!", n=2) == {"the cat", "cat sat"}
    assert text_shingles("ＡＢＣ def", n=5) == {"abc def"}  # NFKC folds full-width letters; short text = one shingle
    assert text_shingles("一只狗在跑", n=3) == {"一只狗", "只狗在", "狗在跑"}
    assert text_shingles("  ...  ", n=3) == set()
    assert text_shingles("", n=3) == set()


def test_minhash_matches_datasketch_affine64():
    text = "a small red boat drifts slowly across the calm blue lake at dawn while birds sing"
    reference = MinHash(num_perm=64, seed=7, scheme="affine64")
    reference.update_batch([s.encode("utf-8") for s in text_shingles(text, 3)])
    signature = minhash_signature(text, num_perm=64, ngram=3, seed=7)
    assert signature.dtype == np.uint64 and signature.shape == (64,)
    np.testing.assert_array_equal(signature, reference.hashvalues)
    assert np.all(minhash_signature("", num_perm=16) == EMPTY_MINHASH_VALUE)


def test_minhash_is_the_same_in_another_process():
    code = ("from vlmloom.curation.hashing import minhash_signature;"
            "print(minhash_signature('one two three four five six seven', 32, 2).tolist())")
    outputs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert outputs == {str(minhash_signature("one two three four five six seven", 32, 2).tolist()) + "\n"}


def test_minhash_band_keys():
    signature = minhash_signature("the quick brown fox jumps over the lazy dog", num_perm=16, ngram=2)
    keys = minhash_band_keys(signature, bands=4, rows=4)
    assert [band for band, _ in keys] == [0, 1, 2, 3] and all(len(digest) == 32 for _, digest in keys)
    changed = signature.copy()
    changed[5] += np.uint64(1)  # only band 1 (slots 4..7) changes
    assert [a == b for a, b in zip(keys, minhash_band_keys(changed, 4, 4))] == [True, False, True, True]
    with pytest.raises(ValueError, match="raise num_perm"):
        minhash_band_keys(signature, bands=5, rows=4)


# --- pHash bands and verified pairs -----------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 4, 7, 15])
def test_phash_band_keys_pigeonhole(k):
    rng = random.Random(k)
    for _ in range(300):
        a = rng.getrandbits(64)
        b = flip(a, rng.sample(range(64), rng.randint(0, k)))
        keys_a, keys_b = phash_band_keys(a, k), phash_band_keys(b, k)
        assert len(keys_a) == k + 1 and [i for i, _ in keys_a] == list(range(k + 1))
        assert any(x == y for x, y in zip(keys_a, keys_b))
    assert phash_band_keys(0xFFFF_0000_0000_0001, 0) == [(0, 0xFFFF_0000_0000_0001)]
    assert phash_band_keys(2**64 - 1, 3) == [(i, 2**16 - 1) for i in range(4)]
    with pytest.raises(ValueError, match="max_distance"):
        phash_band_keys(1, 64)


def test_verified_pairs_small_bucket_is_exact():
    values = [0b0, 0b1, 0b11, 0b111, 0b1111_0000, 0b111 << 61]
    assert verified_pairs(values, 1) == [(0, 1), (1, 3), (3, 7)]
    assert set(verified_pairs(values, 2)) == brute_force_edges(values, 2)
    assert verified_pairs([5], 3) == [] and verified_pairs([], 3) == []
    with pytest.raises(ValueError, match="distinct"):
        verified_pairs([1, 1, 2], 2)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_verified_pairs_large_bucket_has_the_components_of_all_pairs(k):
    values = random_hashes_with_neighbours(seed=k, count=1500, planted=150, max_flips=k + 2)
    assert len(values) > BRUTE_FORCE_MAX  # exercises the pigeonhole split
    edges = verified_pairs(values, k)
    truth = brute_force_edges(values, k)
    assert set(edges) <= truth
    assert components_of(values, edges) == components_of(values, truth)


def test_verified_pairs_clique_bucket_is_linear():
    # 2**12 distinct values that differ only in 12 bits: with k=12 every pair is an edge (8.4M of them);
    # the cap returns a star from the smallest value instead.
    base = 0xABCD_0000_0000_0000
    values = [base | (i << 20) for i in range(2**12)]
    edges = verified_pairs(values, 12)
    assert len(edges) == len(values) - 1 and all(a == base for a, _ in edges)


# --- union-find and representatives -----------------------------------------------------------------
def test_union_find():
    union = UnionFind(["e"])
    for a, b in [("d", "c"), ("c", "b"), ("x", "y")]:
        union.union(a, b)
    assert union.find("d") == union.find("b") and union.find("x") != union.find("b")
    assert union.components() == {"e": "e", "d": "b", "c": "b", "b": "b", "x": "x", "y": "x"}
    other = UnionFind()
    for a, b in [("y", "x"), ("b", "c"), ("c", "d")]:
        other.union(a, b)
    other.add("e")
    assert other.components() == union.components()
    with pytest.raises(KeyError, match="unknown item"):
        union.find("zz")


def test_choose_representative():
    assert choose_representative([("b", 100), ("a", 50), ("c", 100)]) == "b"
    assert choose_representative([("z", 1)]) == "z"
    with pytest.raises(ValueError):
        choose_representative([])


# --- cluster_phashes --------------------------------------------------------------------------------
def render(seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (256, 192), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(230), rng.randrange(170)
        box = (x0, y0, x0 + rng.randrange(10, 120), y0 + rng.randrange(10, 90))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    draw.text((20, 20), f"sample {seed}", fill=(0, 0, 0))
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_image_variants_cluster_and_distinct_images_do_not():
    base = render(1)
    images = {
        "base": encoded(base),
        "half": encoded(base.resize((128, 96))),
        "double": encoded(base.resize((512, 384)), "JPEG", quality=90),
        "jpeg30": encoded(base, "JPEG", quality=30),
        "brighter": encoded(ImageEnhance.Brightness(base).enhance(1.2)),
        **{f"other{seed}": encoded(render(seed)) for seed in range(2, 8)},
    }
    items = []
    for key, data in images.items():
        sample = Sample(key=key, source="s", source_id=key, images=[ImageRef(bytes=data)])
        verdict = decode_sample(sample, DecodeConfig())
        assert verdict.keep
        verdict.merge_into(sample, "decode")
        items.append((key, phash_int(sample.signals["phash"]), sample.signals["width"] * sample.signals["height"]))
    clusters = cluster_phashes(items, max_distance=8)
    assert clusters == {key: "double" for key in ("base", "half", "double", "jpeg30", "brighter")}


def test_chains_are_transitive():
    a = 0
    b = flip(a, range(0, 4))   # 4 from a
    c = flip(b, range(4, 8))   # 4 from b, 8 from a
    d = flip(c, range(8, 12))  # 4 from c, 12 from a
    far = flip(a, range(30, 60))
    items = [("a", a, 10), ("b", b, 10), ("c", c, 10), ("d", d, 10), ("far", far, 99)]
    assert cluster_phashes(items, 4) == {"a": "a", "b": "a", "c": "a", "d": "a"}
    assert cluster_phashes(items, 3) == {}


def test_exact_duplicates_and_order_independence():
    values = random_hashes_with_neighbours(seed=3, count=400, planted=60, max_flips=6)
    rng = random.Random(0)
    items = [(f"k{i:04d}", v, rng.choice([100, 200, 200])) for i, v in enumerate(values)]
    items += [(f"dup{i}", values[i], 200) for i in range(0, 400, 40)]  # exact copies under other keys
    expected = cluster_phashes(items, 6)
    for _ in range(3):
        rng.shuffle(items)
        assert cluster_phashes(items, 6) == expected
    # every exact copy is in a cluster with its original, and each cluster has one representative
    for i in range(0, 400, 40):
        assert expected[f"dup{i}"] == expected[f"k{i:04d}"]
    for key, rep in expected.items():
        assert expected[rep] == rep
    # the clusters are the connected components of the brute-force graph on distinct hashes
    truth = components_of(values, brute_force_edges(values, 6))
    by_key = {key: h for key, h, _ in items}
    for key, rep in expected.items():
        assert truth[by_key[key]] == truth[by_key[rep]]


def test_cluster_phashes_rejects_duplicate_keys_and_handles_empty():
    assert cluster_phashes([], 4) == {}
    with pytest.raises(ValueError, match="'x' appears more than once"):
        cluster_phashes([("x", 1, 1), ("x", 2, 1)], 4)


def test_hundred_thousand_identical_hashes_are_one_cluster():
    h = 0x0123_4567_89AB_CDEF
    items = [(f"img{i:06d}", h, 1000) for i in range(100_000)]
    items.append(("img_big", flip(h, [0, 9]), 5000))  # a near variant, larger: it represents the cluster
    items.append(("unrelated", ~h & (2**64 - 1), 10**6))
    clusters = cluster_phashes(items, 4)
    assert len(clusters) == 100_001 and set(clusters.values()) == {"img_big"}


# --- cluster_minhash --------------------------------------------------------------------------------
PARAGRAPH = (
    "The old lighthouse stood on the northern cliff for more than two hundred years, guiding fishing boats "
    "home through fog and storms, until the harbour closed and the keeper moved to the city with his family."
)


def test_cluster_minhash():
    texts = {
        "orig": PARAGRAPH,
        "typo": PARAGRAPH.replace("northern", "nothern"),
        "longer": PARAGRAPH + " Nobody lives there now.",
        "other": "A recipe for bread: mix flour, water, salt and yeast, knead for ten minutes and bake it hot.",
        "empty1": "",
        "empty2": "...",
    }
    items = [(key, minhash_signature(text, num_perm=128, ngram=3), len(text)) for key, text in texts.items()]
    clusters = cluster_minhash(items, threshold=0.7, bands=32, rows=4)
    assert clusters == {"orig": "longer", "typo": "longer", "longer": "longer"}
    assert estimated_jaccard(items[0][1], items[1][1]) >= 0.7
    assert cluster_minhash(list(reversed(items)), threshold=0.7, bands=32, rows=4) == clusters


def test_cluster_minhash_is_transitive_and_groups_identical_signatures():
    words = [f"w{i}" for i in range(60)]
    a = " ".join(words)
    b = " ".join(words[10:] + [f"x{i}" for i in range(10)])  # shares 50/70 of a's 1-grams
    c = " ".join(words[20:] + [f"x{i}" for i in range(10)] + [f"y{i}" for i in range(10)])
    items = [(key, minhash_signature(text, num_perm=256, ngram=1), len(text))
             for key, text in {"a": a, "b": b, "c": c, "a_copy": a}.items()]
    jaccard = lambda i, j: estimated_jaccard(items[i][1], items[j][1])
    assert jaccard(0, 1) >= 0.6 and jaccard(1, 2) >= 0.6 and jaccard(0, 2) < 0.6
    assert cluster_minhash(items, threshold=0.6, bands=64, rows=4) == {"a": "a", "a_copy": "a", "b": "a", "c": "a"}
    with pytest.raises(ValueError, match="exceeds"):
        cluster_minhash(items, threshold=0.6, bands=64, rows=8)
