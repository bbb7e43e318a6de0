"""Which problems are the same problem: pairs by question text and by image, found through indexes
(MinHash LSH, multi-index Hamming tables), never by comparing all pairs.

Two problems match when their questions ask about the same numbers (in order; the options' values as a
set) with the same operators, and their reference answers, where both are numbers, are the same numbers
(each rule can be turned off), and

- image: one of their images is within `image_distance` bits of one of the other's (either hash), or
- text: their normalised questions are equal, or near (MinHash Jaccard of the content words >=
  `text_similarity`) with the same numbers (options included, in any order), and,
  when both have images, the images are within `text_image_distance` bits: the same template
  question over another diagram ("Find x.") is another problem.

The seed and pool files are streamed: each problem is checked against the benchmarks' index
(contamination) and against the seed/pool problems before it (duplicates: the first copy is kept),
then added to the latter index. Both indexes are SQLite files: memory does not grow with the pool.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mathse.data.image_hashes import distance, index_keys, probe_keys
from mathse.data.pictures import picture_difference
from mathse.data.sketches import Sketch
from mathse.data.text_sketches import (
    band_keys,
    exact_key,
    numbers_compatible,
    options_compatible,
    signature_values,
    similarity,
)
from mathse.run.config import DataCheckConfig

__all__ = ["Match", "SketchIndex", "Verdict", "check_stream"]


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
    """Sketched problems in a SQLite file (memory stays flat however many are added), filed under their
    keys: the exact text key, the MinHash LSH band keys, the image hashes' chunk keys. `matches` looks up
    a problem's keys (probing the image chunks within the threshold), then compares each candidate whole.

    `path`: the file (made anew; removed by `close`); None: a temporary file.
    """

    def __init__(self, settings: DataCheckConfig, path: Path | None = None) -> None:
        self.t = settings  # thresholds and rules (data_check)
        if path is None:
            handle, name = tempfile.mkstemp(prefix="mathse-check-", suffix=".sqlite")
            os.close(handle)
            path = Path(name)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._size = 0

    def add(self, sketch: Sketch, source: str) -> None:
        item = self._size
        self._size += 1
        values = signature_values(sketch.signature)
        keys = {exact_key(sketch.key), *band_keys(values, sketch.salt)}
        image_rows = {(k, item, *(_signed(h) for h in pair)) for pair in sketch.images
                      for kind, value in enumerate(pair) for k in index_keys(value, kind)}
        data = [sketch.key, sketch.salt, sketch.numbers, sketch.options, sketch.operators, sketch.answer,
                [list(p) for p in sketch.images], sketch.paths]
        self._db.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (item, source, sketch.id, json.dumps(data)))
        self._db.execute("INSERT INTO signatures VALUES (?, ?)", (item, values.tobytes()))
        self._db.executemany("INSERT OR IGNORE INTO keys VALUES (?, ?)", ((k, item) for k in keys))
        self._db.executemany("INSERT OR IGNORE INTO image_keys VALUES (?, ?, ?, ?)", image_rows)
        if self._size % 10_000 == 0:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")

    def matches(self, sketch: Sketch) -> list[Match]:
        """The indexed problems that match `sketch`, closest first."""
        values = signature_values(sketch.signature)
        probes = [exact_key(sketch.key), *band_keys(values, sketch.salt)]
        candidates = {item for (item,) in self._db.execute(_TEXT_CANDIDATES, (json.dumps(probes),))}
        if sketch.images:  # the hashes come with the keys: only the pictures within the distance are read on
            probes = [k for pair in sketch.images for kind, value in enumerate(pair)
                      for k in probe_keys(value, kind, self.t.image_distance)]
            rows = self._db.execute(_IMAGE_CANDIDATES, (json.dumps(probes),)).fetchall()
            if rows:
                near = np.array(rows, dtype=np.int64)  # (item, phash, trim) per row
                hashes = near[:, 1:].view(np.uint64)
                mine = np.array(sketch.images, dtype=np.uint64)  # (images, kinds)
                bits = np.bitwise_count(hashes[:, None, :] ^ mine[None, :, :]).min(axis=(1, 2))
                candidates.update(near[bits <= self.t.image_distance, 0].tolist())
        rows = self._db.execute(_CANDIDATES, (json.dumps(sorted(candidates)),)).fetchall()
        found: list[Match] = []
        for source, other_id, data, signature in rows:
            key, salt, other_numbers, other_options, other_operators, other_answer, other_images, other_paths = (
                json.loads(data))
            if self.t.require_same_numbers and not (
                numbers_compatible(sketch.numbers, tuple(other_numbers))
                and options_compatible(sketch.options, tuple(other_options))
                and numbers_compatible(sketch.operators, tuple(other_operators))
            ):
                continue
            if self.t.require_same_answer and sketch.answer and other_answer and sketch.answer != tuple(other_answer):
                continue
            d_img = closest(sketch.images, other_images) if sketch.images and other_images else None
            by_image = d_img is not None and d_img <= self.t.image_distance
            sim: float | None = None
            if key == sketch.key:
                sim = 1.0
            elif salt == sketch.salt:  # near words count between questions with the same numbers only
                sim = similarity(values, np.frombuffer(signature, np.uint32))
            if sim is not None and (sim < self.t.text_similarity or (d_img is not None
                                                                     and d_img > self.t.text_image_distance)):
                sim = None  # other words, or the same words over another picture
            if not by_image and sim is None:
                continue
            if d_img is not None and self.t.picture_check and not self._same_picture(
                    sketch, other_images, other_paths, max(self.t.image_distance, self.t.text_image_distance)):
                continue  # alike by hash and words, another picture (a changed label, another diagram)
            signal = "text+image" if by_image and sim is not None else ("image" if by_image else "text")
            found.append(Match(source, other_id, signal, d_img, sim))
        found.sort(key=lambda m: (m.image_distance if m.image_distance is not None else 99, -(m.text_similarity or 0)))
        return found

    def _same_picture(self, sketch: Sketch, other_images: list[list[int]], other_paths: list[str],
                      within: int) -> bool:
        """Whether an image of `sketch` and one of the other problem, among the pairs within `within` bits
        (closest first), are the same picture by `picture_difference`. A file that cannot be read now
        leaves the hashes' verdict (a pair within `image_distance`)."""
        pairs = sorted((min(distance(x, y) for x, y in zip(a, b, strict=True)), pa, pb)
                       for a, pa in zip(sketch.images, sketch.paths, strict=True)
                       for b, pb in zip(other_images, other_paths, strict=True))
        for d, pa, pb in pairs:
            if d > within:
                break
            try:
                if picture_difference(pa, pb) <= self.t.picture_difference:
                    return True
            except OSError:
                if d <= self.t.image_distance:
                    return True
        return False

    def close(self) -> None:
        """Remove the file."""
        self._db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SketchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._size


_SCHEMA = """
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -32768;
CREATE TABLE items (item INTEGER PRIMARY KEY, source TEXT, id TEXT, data TEXT);
CREATE TABLE signatures (item INTEGER PRIMARY KEY, hashvalues BLOB);
CREATE TABLE keys (key INTEGER, item INTEGER, PRIMARY KEY (key, item)) WITHOUT ROWID;
CREATE TABLE image_keys (key INTEGER, item INTEGER, phash INTEGER, trim INTEGER, PRIMARY KEY (key, item, phash, trim))
    WITHOUT ROWID;
"""
_TEXT_CANDIDATES = "SELECT DISTINCT item FROM keys WHERE key IN (SELECT value FROM json_each(?))"
_IMAGE_CANDIDATES = "SELECT item, phash, trim FROM image_keys WHERE key IN (SELECT value FROM json_each(?))"
# Each candidate once, in the order added (so the first copy of a problem is named first among equals).
_CANDIDATES = """
SELECT items.source, items.id, items.data, signatures.hashvalues FROM items JOIN signatures USING (item)
WHERE item IN (SELECT value FROM json_each(?)) ORDER BY item
"""
def _signed(value: int) -> int:
    """A 64-bit hash as a SQLite integer (signed; numpy's uint64 view gives it back)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def closest(a: Iterable[Iterable[int]], b: Iterable[Iterable[int]]) -> int:
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
    benchmarks: SketchIndex | None,
    sources: Iterable[tuple[str, Iterable[Sketch]]],
    settings: DataCheckConfig,
    index_path: Path | None = None,
) -> Iterator[Verdict]:
    """Each seed/pool problem's matches against the benchmarks and the problems before it (those are
    indexed in `index_path`, a temporary file when None, removed at the end)."""
    with SketchIndex(settings, index_path) as own:
        for source, sketches in sources:
            for sketch in sketches:
                contamination = benchmarks.matches(sketch) if benchmarks is not None else []
                duplicates = own.matches(sketch)
                own.add(sketch, source)
                yield Verdict(source, sketch, contamination, duplicates)
