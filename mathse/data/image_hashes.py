"""A problem's images as the data check compares them: two 64-bit perceptual hashes (imagehash) per
image, and the keys of a multi-index hash table that finds the hashes within a Hamming distance without
comparing all pairs (the table itself: `mathse.data.duplicates.SketchIndex`).

- `phash`: the DCT hash of the whole picture in grey, contrast stretched (a recoloured copy gets the
  same grey levels back): robust to re-encoding, rescaling and recolouring.
- `trim`: the same hash of the picture cut to its content (the background border dropped), so a
  copy cropped or padded in the margins hashes like the original.

Two images are the same picture when either hash is within the threshold.
"""

from __future__ import annotations

import functools
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

__all__ = ["HASH_KINDS", "distance", "image_hashes", "index_keys", "probe_keys"]

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


@functools.cache
def _chunk_masks(max_distance: int) -> tuple[int, ...]:
    if not 0 <= max_distance < 12:
        raise ValueError(f"image hash index: max_distance {max_distance} outside 0..11")
    return tuple(_flips(_CHUNK_BITS, max_distance // _CHUNKS))


def _chunk_key(kind: int, chunk: int, value: int) -> int:
    return ((kind * _CHUNKS + chunk) << _CHUNK_BITS) | value


def index_keys(value: int, kind: int) -> list[int]:
    """The keys a 64-bit hash of kind `kind` (its place in HASH_KINDS) is filed under: its 4 chunks of 16
    bits (multi-index hashing). Two hashes within distance t differ in at most t // 4 bits in one of their
    chunks (pigeonhole), so `probe_keys(other, kind, t)` shares a key with these for every such hash."""
    return [_chunk_key(kind, c, (value >> (c * _CHUNK_BITS)) & 0xFFFF) for c in range(_CHUNKS)]


def probe_keys(value: int, kind: int, max_distance: int) -> list[int]:
    """The keys to look up for the hashes within `max_distance` bits of `value`: each chunk and every chunk
    within max_distance // 4 flipped bits (a superset: candidates are compared whole afterwards)."""
    masks = _chunk_masks(max_distance)
    keys = []
    for c in range(_CHUNKS):
        chunk = (value >> (c * _CHUNK_BITS)) & 0xFFFF
        keys.extend(_chunk_key(kind, c, chunk ^ m) for m in masks)
    return keys
