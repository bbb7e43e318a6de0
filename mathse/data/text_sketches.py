"""A question's text as the data check compares it: normalised text, its exact key, its numbers, and a
MinHash sketch (datasketch) of its word shingles, indexed with MinHash LSH for near duplicates.

Normalising drops case, punctuation and spacing, so a re-punctuated copy has the same exact key. A
near duplicate (reworded, options reordered) shares most shingles: its estimated Jaccard similarity
is at or above a threshold; MinHash LSH (datasketch's banding) proposes the candidates (`band_keys`; the
table: `mathse.data.duplicates.SketchIndex`). Two questions that ask about different numbers are different problems
however alike their words ("What is 6 + 5?" / "What is 7 + 5?"): `numbers_compatible` says whether
one question's numbers appear, in order, among the other's (a copy may add the options' numbers).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import unicodedata

import numpy as np
from datasketch import LeanMinHash, MinHash
from datasketch.lsh import _optimal_param

__all__ = [
    "MINHASH_SEED", "band_keys", "exact_key", "jaccard", "lsh_params", "minhash", "normalise", "numbers",
    "numbers_compatible", "pack_signature", "shingles", "signature_values", "similarity", "text_key",
    "unpack_signature",
]

MINHASH_SEED = 1
NUMBER_WEIGHT = 8
MINHASH_SCHEME = "affine32"  # datasketch 2.0's default: 32-bit hash values
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[+\-*/=<>^%√π°∠△]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def normalise(text: str) -> str:
    """Lower-case words, numbers and math symbols joined by single spaces (punctuation and layout dropped)."""
    return " ".join(_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()))


def text_key(normalised: str) -> str:
    """The exact-match key of a normalised question (16 hex digits of its sha1)."""
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:16]


def numbers(text: str) -> list[str]:
    """The numbers a question mentions, in order (as written: "05" and "5" differ; "5.0" too)."""
    return _NUMBER.findall(unicodedata.normalize("NFKC", text))


def numbers_compatible(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One question's numbers, in their order, are among the other's in the same order: a copy keeps
    the numbers it asks about (and may add the options' numbers), while "What is 6 + 4?" and
    "What is 4 + 6?" are two problems."""
    if a == b or not a or not b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    rest = iter(long)
    return all(n in rest for n in short)  # a subsequence: `in` consumes the iterator up to the match


def shingles(normalised: str, n: int) -> set[bytes]:
    """The word n-grams of 1..n words (short questions share few long n-grams), as bytes; each number
    also counts `NUMBER_WEIGHT` times more, so templated questions about other numbers ("AB is 3" /
    "AB is 4") come out far apart and a reworded copy that keeps its numbers stays close."""
    words = normalised.split()
    found = {" ".join(words[i : i + k]).encode("utf-8") for k in range(1, n + 1) for i in range(len(words) - k + 1)}
    found |= {f"#{w}#{j}".encode() for w in words if _NUMBER.fullmatch(w) for j in range(NUMBER_WEIGHT)}
    return found or {b""}


def minhash(normalised: str, num_perm: int, n: int) -> LeanMinHash:
    """The MinHash sketch of a normalised question's shingles (deterministic: a fixed seed)."""
    sketch = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, permutations=_permutations(num_perm))
    sketch.update_batch(list(shingles(normalised, n)))
    return LeanMinHash(sketch)


@functools.cache
def _permutations(num_perm: int) -> object:
    """The MinHash permutations of (seed, num_perm), drawn once (datasketch draws them per sketch)."""
    return MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations


def pack_signature(sketch: LeanMinHash) -> str:
    """A sketch's hash values as base64 text (uint32 each) for the sketch cache."""
    return base64.b64encode(np.asarray(sketch.hashvalues, dtype=np.uint32).tobytes()).decode("ascii")


def signature_values(text: str) -> np.ndarray:
    """A packed sketch's hash values (uint32)."""
    return np.frombuffer(base64.b64decode(text), dtype=np.uint32)


def unpack_signature(text: str) -> LeanMinHash:
    values = signature_values(text).astype(np.uint64)
    return LeanMinHash(seed=MINHASH_SEED, hashvalues=values, scheme=MINHASH_SCHEME)


def jaccard(a: LeanMinHash, b: LeanMinHash) -> float:
    """The estimated Jaccard similarity of two sketches' shingle sets."""
    return float(a.jaccard(b))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for MinHash LSH at `threshold`: datasketch's own choice (`MinHashLSH` with
    its default weights), so two sketches whose similarity reaches the threshold most likely share a band."""
    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_keys(values: np.ndarray, bands: int, rows: int) -> list[int]:
    """The LSH keys of a sketch's hash values (uint32): one 63-bit key per band."""
    raw = np.ascontiguousarray(values, dtype=np.uint32)
    return [_key(b"band%d:" % b + raw[b * rows : (b + 1) * rows].tobytes()) for b in range(bands)]


def exact_key(key: str) -> int:
    """The index key of a normalised question's exact-match key."""
    return _key(b"text:" + key.encode("ascii"))


def _key(data: bytes) -> int:
    # 63 bits (a SQLite integer), far above the image index's small keys
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1 | (1 << 62)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The estimated Jaccard similarity of two sketches' hash values (the share of equal values)."""
    return float(np.count_nonzero(a == b)) / len(a)
