"""Content hashes used by dedup: sha256 of bytes, 64-bit pHash helpers, text shingles and MinHash.

bytes → `sha256_hex`; pHash hex → int → `hamming`; text → `text_shingles` → `minhash_signature`
(uint64[num_perm]) → `minhash_band_keys` (what the Beam near-dup stage groups by).
Everything here is deterministic across processes and machines: no Python `hash()`, no salted seeds.
"""
from __future__ import annotations

import functools
import hashlib
import unicodedata

import numpy as np

# MinHash follows datasketch's "affine64" scheme bit for bit (sha1 → 64 bits, MurmurHash3 fmix64,
# then odd-`a` affine permutations mod 2^64), so signatures can be compared with datasketch.MinHash
# built with `scheme="affine64"` and the same seed; the test suite uses it as the oracle.
EMPTY_MINHASH_VALUE = np.uint64(2**64 - 1)  # every slot of the signature of a text with no shingles

_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash_int(hex_str: str) -> int:
    """The 64-bit integer of a 16-character pHash hex string (as written in `signals["phash"]`)."""
    if len(hex_str) != 16:
        raise ValueError(f"pHash {hex_str!r}: expected 16 hex characters (a 64-bit hash)")
    return int(hex_str, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _is_cjk(ch: str) -> bool:
    # Scripts written without spaces between words: Han, kana, Hangul syllables, Thai, Lao, Khmer, Myanmar.
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F or 0xF900 <= cp <= 0xFAFF
        or 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xAC00 <= cp <= 0xD7AF
        or 0x0E00 <= cp <= 0x0EFF or 0x1780 <= cp <= 0x17FF or 0x1000 <= cp <= 0x109F
    )


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation and symbols replaced by spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    chars = [" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text]
    return " ".join("".join(chars).split())


def text_shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text; character n-grams (spaces removed) when at least half of the
    letters are CJK-like (no spaces between words). A text shorter than n units is one shingle; "" → set()."""
    if n < 1:
        raise ValueError(f"shingle size n={n}: must be >= 1")
    norm = normalize_text(text or "")
    if not norm:
        return set()
    letters = norm.replace(" ", "")
    if sum(_is_cjk(ch) for ch in letters) * 2 >= len(letters):
        units: list[str] = list(letters)
        joiner = ""
    else:
        units = norm.split(" ")
        joiner = " "
    if len(units) <= n:
        return {joiner.join(units)}
    return {joiner.join(units[i:i + n]) for i in range(len(units) - n + 1)}


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Same draws as datasketch.MinHash._init_permutations for scheme "affine64".
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = gen.randint(0, 1 << 64, num_perm, dtype=np.uint64)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def _shingle_hashes(shingles: set[str]) -> np.ndarray:
    digests = b"".join(hashlib.sha1(s.encode("utf-8")).digest()[:8] for s in shingles)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def minhash_signature(text: str, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """uint64[num_perm] MinHash of `text_shingles(text, ngram)`; all slots EMPTY_MINHASH_VALUE for no shingles."""
    if num_perm < 1:
        raise ValueError(f"num_perm={num_perm}: must be >= 1")
    shingles = text_shingles(text, ngram)
    if not shingles:
        return np.full(num_perm, EMPTY_MINHASH_VALUE, dtype=np.uint64)
    a, b = _permutations(num_perm, seed)
    hv = _shingle_hashes(shingles)
    s1, m1, s2, m2, s3 = _FMIX64
    with np.errstate(over="ignore"):  # wraparound is the intended arithmetic mod 2^64
        hv = hv ^ (hv >> s1)
        hv = hv * m1
        hv = hv ^ (hv >> s2)
        hv = hv * m2
        hv = hv ^ (hv >> s3)
        # Chunk the (shingles x num_perm) product so one long document does not allocate gigabytes.
        out = np.full(num_perm, EMPTY_MINHASH_VALUE, dtype=np.uint64)
        for start in range(0, len(hv), 4096):
            chunk = hv[start:start + 4096, None] * a[None, :] + b[None, :]
            np.minimum(out, chunk.min(axis=0), out=out)
    return out


def minhash_band_keys(signature: np.ndarray, bands: int, rows: int) -> list[tuple[int, str]]:
    """[(band index, hex digest of that band's `rows` values)]; two texts collide in a band when all its rows match."""
    sig = np.asarray(signature, dtype=np.uint64)
    if bands < 1 or rows < 1 or bands * rows > len(sig):
        raise ValueError(
            f"minhash bands={bands} x rows={rows} needs {bands * rows} signature values, have {len(sig)}: "
            "lower bands or rows, or raise num_perm"
        )
    raw = sig.astype("<u8").tobytes()
    width = rows * 8
    return [(i, hashlib.blake2b(raw[i * width:(i + 1) * width], digest_size=16).hexdigest()) for i in range(bands)]


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal MinHash slots: an unbiased estimate of the Jaccard similarity of the shingle sets."""
    if len(a) != len(b):
        raise ValueError(f"MinHash signatures of different lengths ({len(a)} vs {len(b)})")
    return float(np.count_nonzero(np.asarray(a) == np.asarray(b))) / len(a)
