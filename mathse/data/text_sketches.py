"""A question's text as the data check compares it: its normalised words and exact key, its numbers and
operators (hard rules), and a MinHash sketch (datasketch) of its content words, found through MinHash LSH
band keys salted with the question's numbers.

- Normalising drops case, punctuation and spacing (NFKC), writes spelled-out small numbers as digits
  ("two" .. "twenty"; not "one", often a pronoun) and "plus" / "minus" / "times" / "×" / "÷" as operators:
  a re-punctuated copy has the same exact key.
- Content words: the normalised words less `STOP_WORDS` (function words, instruction verbs such as "find"
  or "work out", the words a question uses to point at its picture: "image", "figure", "shown"). Numbers
  and math symbols always stay. A reworded or paraphrased copy (synonyms, sentences reordered, an
  instruction added) keeps most of them: its estimated Jaccard similarity is at or above a threshold.
- Candidates: every LSH band key carries a salt naming the question's numbers as a multiset, so two
  questions meet only when they mention the same numbers (templated questions over other numbers never
  do, however loose the word threshold: the candidates stay bounded in a 300K pool). A question with
  numbers is banded num_perm/2 x 2 (loose: its salt narrows it), one without num_perm/4 x 4.
- Rules: two questions that ask about other numbers, or the same numbers in another order, are other
  problems ("What is 6 + 4?" / "What is 4 + 6?"); multiple-choice options' values are compared as a set
  apart from the question's numbers (a copy may move or reorder the options line), and the operators
  must agree in order as the numbers do ("7 + 3" is not "7 - 3").

Measured in benchmarks/RESULTS.md ("Data check"); the table: `mathse.data.duplicates.SketchIndex`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
from datasketch import LeanMinHash, MinHash

__all__ = [
    "MINHASH_SEED", "STOP_WORDS", "band_keys", "band_layout", "content_words", "exact_key", "minhash", "normalise",
    "number_salt", "numbers", "numbers_compatible", "operators", "options_compatible", "pack_signature",
    "signature_values", "similarity", "split_numbers", "text_key", "words",
]

MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # datasketch 2.0's default: 32-bit hash values
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[+\-*/=<>^%√π°∠△×÷]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")  # "right-angled": a word break, not a minus
_NUMBER_NAMES = ("zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                 "seventeen eighteen nineteen twenty")
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_NUMBER_NAMES.split()) if w != "_"}
OPERATOR_WORDS = {"plus": "+", "minus": "-", "times": "*", "×": "*", "÷": "/", "divided": "/"}
_OPERATORS = frozenset("+-*/=<>^")
_OPTION = re.compile(r"(?:\(([A-Ha-h])\)|(?<![\w.])([A-H])[).:])\s*(-?\d+(?:\.\d+)?)")

_FUNCTION = (
    "a an the is are was were be been being am of in on at to for from by with and or as that this these those it its "
    "their there here which what whose who whom how many much do does did can could will would should shall may might "
    "must has have had not if then than so such each every all any some into onto over under about please you your "
    "we our us let one")
_INSTRUCTION = (
    "find compute calculate determine evaluate work out answer solve give write state value question following "
    "count tell choose select option options correct")
_FIGURE = ("image images picture pictures figure figures diagram shown shows show displays display displayed drawn "
           "draw depicted illustrated below above given")
STOP_WORDS: frozenset[str] = frozenset(f"{_FUNCTION} {_INSTRUCTION} {_FIGURE}".split())


def words(text: str) -> list[str]:
    """Lower-case words, numbers and math symbols (punctuation dropped; small numbers as digits, operator
    words as symbols)."""
    text = _WORD_HYPHEN.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return [NUMBER_WORDS.get(w) or OPERATOR_WORDS.get(w, w) for w in _TOKEN.findall(text)]


def normalise(text: str) -> str:
    """The normalised words joined by single spaces (what the exact key is taken of)."""
    return " ".join(words(text))


def text_key(normalised: str) -> str:
    """The exact-match key of a normalised question (16 hex digits of its sha1)."""
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:16]


def numbers(text: str) -> list[str]:
    """The numbers a text writes in digits, in order (as written: "05" and "5" differ; "5.0" too)."""
    return _NUMBER.findall(unicodedata.normalize("NFKC", text))


def split_numbers(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the question's numbers in order, the multiple-choice options' values sorted). An option is a number
    right after a letter marker: "(A) 5", "A) 5", "A. 5", "A: 5"."""
    options = tuple(sorted(m.group(3) for m in _OPTION.finditer(text)))
    return tuple(w for w in words(_OPTION.sub(" ", text)) if _NUMBER.fullmatch(w)), options


def operators(normalised_words: Iterable[str]) -> tuple[str, ...]:
    """The arithmetic operators a question writes, in order."""
    return tuple(w for w in normalised_words if w in _OPERATORS)


def numbers_compatible(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One sequence (numbers, or operators), in its order, is among the other's in the same order: a copy
    keeps what it asks about, while "What is 6 + 4?" and "What is 4 + 6?" are two problems."""
    if a == b or not a or not b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    rest = iter(long)
    return all(n in rest for n in short)  # a subsequence: `in` consumes the iterator up to the match


def options_compatible(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The same option values in any order (a side without options passes)."""
    return not a or not b or a == b


def content_words(normalised_words: Iterable[str]) -> set[str]:
    """The words that carry the problem: all but `STOP_WORDS` (numbers and math symbols stay)."""
    return {w for w in normalised_words if w not in STOP_WORDS} or {""}


def minhash(content: Iterable[str], num_perm: int) -> LeanMinHash:
    """The MinHash sketch of a question's content words (deterministic: a fixed seed)."""
    sketch = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, permutations=_permutations(num_perm))
    sketch.update_batch([w.encode("utf-8") for w in content])
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


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The estimated Jaccard similarity of two sketches' content words (the share of equal hash values)."""
    return float(np.count_nonzero(a == b)) / len(a)


def number_salt(all_numbers: Iterable[str]) -> str:
    """16 hex digits naming a question's numbers (options included) as a multiset; "" without numbers."""
    found = sorted(all_numbers)
    return hashlib.sha1(" ".join(found).encode()).hexdigest()[:16] if found else ""


def band_layout(num_perm: int, salted: bool) -> tuple[int, int]:
    """(bands, rows per band): num_perm/2 x 2 for a question with numbers (its salt already narrows the
    candidates: pairs at the threshold meet), num_perm/4 x 4 without (number-free templates share one salt)."""
    return (num_perm // 2, 2) if salted else (num_perm // 4, 4)


def band_keys(values: np.ndarray, salt: str) -> list[int]:
    """The LSH keys of a sketch's hash values (uint32) under its numbers salt: one 63-bit key per band."""
    bands, rows = band_layout(len(values), bool(salt))
    raw = np.ascontiguousarray(values, dtype=np.uint32)
    head = f"band:{salt}:".encode()
    return [_key(head + b.to_bytes(2, "little") + raw[b * rows : (b + 1) * rows].tobytes()) for b in range(bands)]


def exact_key(key: str) -> int:
    """The index key of a normalised question's exact-match key."""
    return _key(b"text:" + key.encode("ascii"))


def _key(data: bytes) -> int:
    # 63 bits (a SQLite integer), far above the image index's small keys
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1 | (1 << 62)
