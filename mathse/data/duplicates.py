"""Which problems are the same problem: pairs by question text and by image, found through indexes
(MinHash LSH, multi-index Hamming tables), never by comparing all pairs.

Two problems match when their questions ask about the same numbers and their reference answers,
where both are numbers, are the same numbers (each rule can be turned off), and

- image: one of their images is within `image_distance` bits of one of the other's (either hash), or
- text: their normalised questions are equal or near (MinHash Jaccard >= `text_similarity`) and,
  when both have images, the images are within `text_image_distance` bits: the same template
  question over another diagram ("Find x.") is another problem.

The seed and pool files are streamed: each problem is checked against the benchmarks' index
(contamination) and against the seed/pool problems before it (duplicates: the first copy is kept),
then added to the latter index. Held per problem: its id, numbers, image hashes and index entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mathse.data.image_hashes import HASH_KINDS, HammingIndex, distance
from mathse.data.sketches import Sketch
from mathse.data.text_sketches import NearTextIndex, numbers_compatible, unpack_signature

__all__ = ["Match", "SketchIndex", "Thresholds", "Verdict", "check_stream"]


@dataclass(frozen=True)
class Thresholds:
    text_similarity: float
    image_distance: int
    text_image_distance: int
    require_same_numbers: bool = True
    num_perm: int = 64
    require_same_answer: bool = True


@dataclass(frozen=True)
class Match:
    """One indexed problem that matches the one checked."""

    source: str  # "seed", "pool" or the benchmark's name
    id: str
    signal: str  # "image", "text" or "text+image"
    image_distance: int | None  # bits, the closest pair of images (None: no image on one side)
    text_similarity: float | None  # estimated Jaccard (1.0: the same normalised text); None: text did not match

    def to_json(self) -> dict[str, object]:
        return {"other_source": self.source, "other_id": self.id, "signal": self.signal,
                "image_distance": self.image_distance, "text_similarity": self.text_similarity}


class SketchIndex:
    """Sketched problems, indexed by text (exact + LSH) and by each image hash."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self._text = NearTextIndex(thresholds.text_similarity, thresholds.num_perm)
        self._images = [HammingIndex(thresholds.image_distance) for _ in HASH_KINDS]
        self._slot_item: list[int] = []  # image slot -> item
        self._names: list[tuple[str, str]] = []  # item -> (source, id)
        self._numbers: list[tuple[str, ...]] = []
        self._answers: list[tuple[float, ...]] = []
        self._hashes: list[tuple[tuple[int, int], ...]] = []

    def add(self, sketch: Sketch, source: str) -> None:
        item = len(self._names)
        self._names.append((source, sketch.id))
        self._numbers.append(sketch.numbers)
        self._answers.append(sketch.answer)
        self._hashes.append(sketch.images)
        self._text.add(item, sketch.key, unpack_signature(sketch.signature))
        for pair in sketch.images:
            for index, value in zip(self._images, pair, strict=True):
                index.add(value)
            self._slot_item.append(item)

    def matches(self, sketch: Sketch) -> list[Match]:
        """The indexed problems that match `sketch`, closest first."""
        by_image: dict[int, int] = {}
        for pair in sketch.images:
            for index, value in zip(self._images, pair, strict=True):
                for slot, d in index.query(value):
                    item = self._slot_item[slot]
                    by_image[item] = min(d, by_image.get(item, d))
        by_text = self._text.query(sketch.key, unpack_signature(sketch.signature))
        found: list[Match] = []
        for item in by_image.keys() | by_text.keys():
            if self.t.require_same_numbers and not numbers_compatible(sketch.numbers, self._numbers[item]):
                continue
            other = self._answers[item]
            if self.t.require_same_answer and sketch.answer and other and sketch.answer != other:
                continue
            d_img = by_image.get(item)
            if d_img is None and sketch.images and self._hashes[item]:
                d_img = closest(sketch.images, self._hashes[item])
            sim = by_text.get(item)
            if sim is not None and d_img is not None and d_img > self.t.text_image_distance:
                sim = None  # same words, another picture
            if item not in by_image and sim is None:
                continue
            signal = "text+image" if item in by_image and sim is not None else ("image" if item in by_image else "text")
            found.append(Match(*self._names[item], signal, d_img, sim))
        found.sort(key=lambda m: (m.image_distance if m.image_distance is not None else 99, -(m.text_similarity or 0)))
        return found

    def __len__(self) -> int:
        return len(self._names)


def closest(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> int:
    """The smallest distance between an image of `a` and one of `b`, over both hashes."""
    b = list(b)
    return min(distance(x, y) for pa in a for pb in b for x, y in zip(pa, pb, strict=True))


@dataclass(frozen=True)
class Verdict:
    """What the check found for one seed/pool problem."""

    source: str
    sketch: Sketch
    contamination: list[Match]
    duplicates: list[Match]  # of problems before it in seed, then pool order


def check_stream(
    benchmarks: SketchIndex | None, sources: Iterable[tuple[str, Iterable[Sketch]]], thresholds: Thresholds
) -> Iterator[Verdict]:
    """Each seed/pool problem's matches against the benchmarks and the problems before it."""
    own = SketchIndex(thresholds)
    for source, sketches in sources:
        for sketch in sketches:
            contamination = benchmarks.matches(sketch) if benchmarks is not None else []
            duplicates = own.matches(sketch)
            own.add(sketch, source)
            yield Verdict(source, sketch, contamination, duplicates)
