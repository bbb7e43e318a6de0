"""A problem's images as the data check compares them: two 64-bit perceptual hashes (imagehash) per
image, and a multi-index hash table that finds the hashes within a Hamming distance without
comparing all pairs.

- `phash`: the DCT hash of the whole picture in grey, contrast stretched (a recoloured copy gets the
  same grey levels back): robust to re-encoding, rescaling and recolouring.
- `trim`: the same hash of the picture cut to its content (the background border dropped), so a
  copy cropped or padded in the margins hashes like the original.

Two images are the same picture when either hash is within the threshold.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

__all__ = ["HASH_KINDS", "HammingIndex", "distance", "image_hashes"]

HASH_KINDS = ("phash", "trim")
_BACKGROUND_TOLERANCE = 40  # grey levels (after the contrast stretch) that still count as background
_CHUNKS, _CHUNK_BITS = 4, 16


def image_hashes(path: str | Path) -> tuple[int, int]:
    """(phash, trim) of one image file, as 64-bit integers."""
    with Image.open(path) as opened:
        grey = ImageOps.autocontrast(opened.convert("L"))
    return _as_int(imagehash.phash(grey)), _as_int(imagehash.phash(_trimmed(grey)))


def _trimmed(grey: Image.Image) -> Image.Image:
    """The picture cut to the box around what differs from its background (the corners' median)."""
    pixels = np.asarray(grey, dtype=np.int16)
    corners = (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1])
    ys, xs = np.nonzero(np.abs(pixels - int(np.median(corners))) > _BACKGROUND_TOLERANCE)
    if len(xs) == 0:
        return grey
    return grey.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def _as_int(value: imagehash.ImageHash) -> int:
    return int(str(value), 16)


def distance(a: int, b: int) -> int:
    """Hamming distance of two 64-bit hashes."""
    return (a ^ b).bit_count()


def _flips(bits: int, radius: int) -> list[int]:
    """Every mask of `bits` bits with at most `radius` bits set."""
    return [sum(1 << i for i in chosen) for r in range(radius + 1) for chosen in combinations(range(bits), r)]


class HammingIndex:
    """64-bit hashes, each given the next slot number, for "which are within distance t of this one"
    (multi-index hashing).

    A hash is cut into 4 chunks of 16 bits, each with its own table. Two hashes within distance t
    differ in at most t // 4 bits in one of their chunks (pigeonhole), so probing each table with
    the query's chunk and every chunk within t // 4 flipped bits finds every such hash; only those
    candidates are compared whole. Memory: a few dozen bytes per hash.
    """

    def __init__(self, max_distance: int) -> None:
        if not 0 <= max_distance < 12:
            raise ValueError(f"HammingIndex: max_distance {max_distance} outside 0..11")
        self.max_distance = max_distance
        self._masks = _flips(_CHUNK_BITS, max_distance // _CHUNKS)
        self._tables: list[dict[int, array]] = [{} for _ in range(_CHUNKS)]
        self._hashes = array("Q")

    def add(self, value: int) -> int:
        """Index `value`; its slot number (0, 1, 2, ... in the order added)."""
        slot = len(self._hashes)
        self._hashes.append(value)
        for c, table in enumerate(self._tables):
            chunk = (value >> (c * _CHUNK_BITS)) & 0xFFFF
            bucket = table.get(chunk)
            if bucket is None:
                table[chunk] = array("q", [slot])
            else:
                bucket.append(slot)
        return slot

    def query(self, value: int) -> Iterator[tuple[int, int]]:
        """(slot, distance) of each indexed hash within `max_distance` of `value` (once each)."""
        seen: set[int] = set()
        for c, table in enumerate(self._tables):
            chunk = (value >> (c * _CHUNK_BITS)) & 0xFFFF
            for mask in self._masks:
                for slot in table.get(chunk ^ mask, ()):
                    if slot in seen:
                        continue
                    seen.add(slot)
                    d = distance(value, self._hashes[slot])
                    if d <= self.max_distance:
                        yield slot, d

    def __len__(self) -> int:
        return len(self._hashes)
