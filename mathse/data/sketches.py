"""Each problem's sketch (text key, numbers, MinHash, image hashes), computed once per file.

A source file's sketches go to ``<cache>/<label>-<content sha256[:16]>-<settings digest>.jsonl``: a
rerun on the same file content and settings reads them back and hashes nothing. They are written in
the file's order to ``.partial``, so a killed run keeps what it sketched and the rerun goes on from
there; the finished file is renamed into place. Image hashing runs in worker processes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathse.data.image_hashes import image_hashes
from mathse.data.text_sketches import (
    content_words,
    minhash,
    number_salt,
    numbers,
    operators,
    pack_signature,
    split_numbers,
    text_key,
    words,
)
from mathse.run.storage import count_lines, iter_jsonl, truncate_torn_tail

__all__ = ["SKETCH_VERSION", "Item", "Sketch", "SketchSettings", "sketch_file", "sketch_item", "text_fields"]

SKETCH_VERSION = 7  # bump when a sketch's meaning changes: old caches are then ignored
_SNIPPET = 120


@dataclass(frozen=True)
class Item:
    """What the check reads of a problem or benchmark item: its id, question and image files."""

    id: str
    question: str
    images: tuple[str, ...]
    answer: str = ""


@dataclass(frozen=True)
class SketchSettings:
    num_perm: int

    def digest(self) -> str:
        text = json.dumps({"v": SKETCH_VERSION, "num_perm": self.num_perm})
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Sketch:
    """One problem's sketch as read back from the cache."""

    id: str
    key: str  # exact-match key of the normalised question
    numbers: tuple[str, ...]  # the question's, in order (the options' values apart)
    answer: tuple[float, ...]  # the numbers of the reference answer (none for a letter or a word)
    signature: str  # packed MinHash values
    images: tuple[tuple[int, int], ...]  # (phash, trim) per image
    snippet: str  # the question's start, for examples in the summary
    unreadable: tuple[str, ...] = ()  # one line per image file that could not be read (text signal only)
    paths: tuple[str, ...] = ()  # the image files hashed, in the order of `images`
    options: tuple[str, ...] = ()  # the multiple-choice options' values, sorted
    operators: tuple[str, ...] = ()  # the question's arithmetic operators, in order
    salt: str = ""  # names all its numbers (options included) as a multiset: the LSH bands' salt

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sketch:
        images = tuple((int(p, 16), int(t, 16)) for p, t in row["images"])
        answer = tuple(float(x) for x in row["answer"])
        return cls(row["id"], row["key"], tuple(row["numbers"]), answer, row["minhash"], images, row["q"],
                   tuple(row["unreadable"]), tuple(row["paths"]), tuple(row["options"]), tuple(row["operators"]),
                   row["salt"])


def text_fields(question: str, num_perm: int) -> dict[str, Any]:
    """The cache row's fields taken from a question's text (see `mathse.data.text_sketches`)."""
    found = words(question)
    asked, options = split_numbers(question)
    return {"key": text_key(" ".join(found)), "numbers": list(asked), "options": list(options),
            "operators": list(operators(found)), "salt": number_salt(asked + options),
            "minhash": pack_signature(minhash(content_words(found), num_perm))}


def sketch_item(item: Item, settings: SketchSettings, where: str) -> dict[str, Any]:
    """The cache row of one item (image files are read and hashed here)."""
    hashes = []
    paths: list[str] = []
    unreadable: list[str] = []
    for ref in item.images:
        if ref.startswith(("http://", "https://", "data:")):
            continue  # not on disk: the text signal only
        try:
            hashes.append(tuple(f"{h:016x}" for h in image_hashes(ref)))
            paths.append(str(ref))
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ...
            # Not the check's to refuse: the stages that use the problem decide (distill stops on an
            # unreadable seed image, generation counts a pool problem's as skipped). Text signal only.
            unreadable.append(f"{where}: record {item.id!r}: image unreadable: {ref} ({type(exc).__name__})")
    return {"id": item.id, **text_fields(item.question, settings.num_perm),
            "answer": sorted(float(x) for x in numbers(item.answer)), "images": hashes,
            "q": " ".join(item.question.split())[:_SNIPPET], "unreadable": unreadable,
            "paths": paths}


def content_digest(paths: Iterable[Path], extra: Any = None) -> str:
    """sha256 over the files' content (and `extra`, e.g. a benchmark's spec): the cache key of a source."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def sketch_file(
    cache_dir: Path,
    label: str,
    digest: str,
    items: Callable[[], Iterator[Item]],
    settings: SketchSettings,
    where: str,
    on_new: Callable[[int], None] | None = None,
    workers: int = 1,
) -> Path:
    """The cache file of a source's sketches, made when absent. Rows are written in the items' order, so a
    partial file (a killed run) is resumed by skipping as many items as it holds rows (the file's content
    is what the name says: the same items in the same order). Past the first `_CHUNK` items, `workers`
    processes hash the images (memory stays flat: a few chunks in flight)."""
    path = cache_dir / f"{label}-{digest}-{settings.digest()}.jsonl"
    if path.is_file():
        return path
    partial = path.with_name(path.name + ".partial")
    truncate_torn_tail(partial)
    done = count_lines(partial)
    rest = itertools.islice(items(), done, None)
    first = next(rest, None)  # a file that fails at once leaves nothing
    partial.parent.mkdir(parents=True, exist_ok=True)
    made = 0
    with partial.open("a", encoding="utf-8") as out:
        if first is not None:
            for row in _sketched(itertools.chain([first], rest), settings, where, workers):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                made += 1
                if on_new is not None:
                    on_new(made)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    return path


_CHUNK = 256


def _sketched(items: Iterator[Item], settings: SketchSettings, where: str, workers: int) -> Iterator[dict[str, Any]]:
    """Each item's row, in order; the first chunk here, the rest in `workers` processes when there is more."""
    for item in itertools.islice(items, _CHUNK):  # one at a time: a kill keeps each one sketched
        yield sketch_item(item, settings, where)
    chunks = iter(lambda: list(itertools.islice(items, _CHUNK)), [])
    if workers <= 1:
        for chunk in chunks:
            yield from _sketch_chunk(chunk, settings, where)
        return
    pool = ProcessPoolExecutor(workers)
    try:
        pending: deque[Future[list[dict[str, Any]]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_sketch_chunk, chunk, settings, where))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _sketch_chunk(chunk: list[Item], settings: SketchSettings, where: str) -> list[dict[str, Any]]:
    return [sketch_item(item, settings, where) for item in chunk]


def read_sketches(path: Path) -> Iterator[Sketch]:
    """The sketches of a cache file, one at a time."""
    for row in iter_jsonl(path):
        yield Sketch.from_row(row)
