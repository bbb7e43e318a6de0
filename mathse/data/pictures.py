"""Verification of a candidate image pair: is it the same picture (re-encoded, rescaled, cropped a
little, recoloured) or another picture that only looks alike (the same drawing with another digit)?

Perceptual hashes cannot tell a changed label from a JPEG re-encode: both move a 64-bit hash by a
few bits. This step is run only on the pairs the hash index proposes, so it can afford to read the
two files and compare them pixel by pixel:

1. Ink maps. Each image in grey (transparency over white), contrast stretched, as "ink" in 0..1
   (0 = the background, taken as the median of the border pixels; a dark background is inverted),
   so a recoloured copy gives the same map.
2. Working grid. The smaller image (by area) is the reference, resampled so that its longer side is
   between `MIN_SIDE` and `MAX_SIDE` pixels: small drawings are enlarged (the 1-pixel tolerance
   below is then half a source pixel); large ones reduced only down to 800 px, so that a label 10 px
   high in a 1000 px diagram stays 8 px high.
3. Registration. (a) Coarse, on both maps reduced by an integer factor to at most `REG_SIDE` px: the
   other image's scale is searched around two guesses (the ratio of the image sizes and of the content
   boxes; +-9% in 1.5% steps at 64 px, then +-2 half steps at each doubling of resolution); for each
   scale the shift is the peak of the FFT cross-correlation (sub-pixel by a parabola), the best
   normalised correlation wins. (b) Fine: three Gauss-Newton steps on (scale, shift) minimising the
   squared difference of the two maps (blurred 1 px), on maps reduced to about `REFINE_SIDE` px. The
   other image is then resampled into the reference's grid (anti-aliased), with a mask of where it
   covers it; `EDGE` source px along the overlap's edge are dropped (a crop's cut).
4. Difference, two regimes by the working scale (one threshold for both):
   - full-size pictures (reference not enlarged): both maps blurred by `BLUR` working px (so leftover
     resampling error along long thin lines vanishes, while a changed glyph, a ~8x6 px blob, stays),
     per-pixel |a - b| minus a noise floor `NOISE`, averaged over a `WINDOW` px square;
   - small drawings (reference enlarged): each pixel's distance to the range of the other's values
     within 1 working px (both ways, the larger kept), so interpolation, half-pixel misregistration and
     JPEG ringing on tiny coloured shapes cost little, minus `NOISE_SMALL`, averaged over a
     `WINDOW_SMALL` source px square.
   The score is the largest window mean: a changed digit, dot or bar end makes one window differ a
   lot, a copy differs a little everywhere. When the sizes differ, the larger image may be the sharper
   (a reduced copy) or not (an enlarged one): the score is also taken with the resampled other blurred
   to the reduced one's sharpness, and the smaller kept.
5. Frames: pictures whose overlap after registration keeps less than `MIN_COVERAGE` of either frame
   (a different framing, not a 5% crop) score 1; so do pairs whose aspect ratios rule that out.

`same_picture(a, b)` is `picture_difference(a, b) <= threshold` (`DEFAULT_THRESHOLD`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import fft as sfft
from scipy import ndimage

__all__ = ["DEFAULT_THRESHOLD", "picture_difference", "same_picture"]

DEFAULT_THRESHOLD = 0.01
MIN_SIDE = 128
MAX_SIDE = 800
REG_SIDE = 256
REFINE_SIDE = 400
WINDOW = 5  # working pixels
BLUR = 1.0  # working pixels, both maps blurred before differencing
EDGE = 2  # source pixels dropped along the overlap's edge (a crop's cut)
SHARPNESS = 0.5
MIN_COVERAGE = 0.8
NOISE = 0.1
NOISE_SMALL = 0.25
WINDOW_SMALL = 3  # source pixels
COARSE_SIDE = 64
_COARSE_STEP = 0.015
_COARSE_STEPS = np.exp(np.arange(-6, 7) * _COARSE_STEP)
_FINE_STEPS = np.exp(np.arange(-2, 3) * 0.004)


def ink_map(path: str | Path) -> np.ndarray:
    """The image as ink in 0..1 (float32, 0 = background)."""
    with Image.open(path) as opened:
        img = opened
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        grey = ImageOps.autocontrast(img.convert("L"))
    g = np.asarray(grey, dtype=np.float32) / 255.0
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    return (1.0 - g) if float(np.median(border)) >= 0.5 else g


def _resample(img: np.ndarray, k: float, offset: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """out[y, x] = img[k * y + oy, k * x + ox] (bilinear, blurred first when reducing; 0 outside)."""
    sigma = 0.45 * (k - 1.0) ** 0.5 * k ** 0.5 if k > 1.0 else 0.0
    if sigma > 0.3:  # below, aliasing is negligible
        img = ndimage.gaussian_filter(img, sigma=sigma, truncate=3.0)
    matrix = np.array([k, k])
    return ndimage.affine_transform(img, matrix, offset=offset, output_shape=shape, order=1, cval=0.0,
                                    prefilter=False)


def _coverage_mask(src_shape: tuple[int, ...], k: float, offset: tuple[float, float],
                   shape: tuple[int, int]) -> np.ndarray:
    ys = k * np.arange(shape[0]) + offset[0]
    xs = k * np.arange(shape[1]) + offset[1]
    iny = (ys >= 0) & (ys <= src_shape[0] - 1)
    inx = (xs >= 0) & (xs <= src_shape[1] - 1)
    return iny[:, None] & inx[None, :]


def _content_box(ink: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box around the ink."""
    ys, xs = np.nonzero(ink > 0.2)
    if len(xs) == 0:
        return ink.shape[0], ink.shape[1]
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def _correlate(ref: np.ndarray, moving: np.ndarray, shape: tuple[int, int],
               f_ref: np.ndarray) -> tuple[float, float, float]:
    """(score, dy, dx): moving[y - dy, x - dx] best matches ref[y, x]; score the normalised correlation."""
    corr = sfft.irfft2(f_ref * np.conj(sfft.rfft2(moving, shape)), shape)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    norm = float(np.sqrt((ref * ref).sum() * (moving * moving).sum())) or 1.0
    best = float(corr[iy, ix])

    def sub(c_minus: float, c0: float, c_plus: float) -> float:
        den = c_minus - 2 * c0 + c_plus
        return 0.0 if den >= 0 else 0.5 * (c_minus - c_plus) / den

    h, w = shape
    dy = iy + sub(corr[(iy - 1) % h, ix], best, corr[(iy + 1) % h, ix])
    dx = ix + sub(corr[iy, (ix - 1) % w], best, corr[iy, (ix + 1) % w])
    dy = dy - h if dy > h / 2 else dy
    dx = dx - w if dx > w / 2 else dx
    return best / norm, float(dy), float(dx)


def _best_scale(ref: np.ndarray, other: np.ndarray, scales: list[float]) -> tuple[float, float, float, float]:
    """(score, k, oy, ox) of the best scale k: other[k * y + oy, k * x + ox] ~ ref[y, x]."""
    k_min = min(scales)
    shape = (sfft.next_fast_len(ref.shape[0] + int(np.ceil(other.shape[0] / k_min)) + 1, real=True),
             sfft.next_fast_len(ref.shape[1] + int(np.ceil(other.shape[1] / k_min)) + 1, real=True))
    f_ref = sfft.rfft2(ref, shape)
    best = (-1.0, 1.0, 0.0, 0.0)
    for k in scales:
        size = (max(2, int(np.ceil(other.shape[0] / k))), max(2, int(np.ceil(other.shape[1] / k))))
        score, dy, dx = _correlate(ref, _resample(other, k, (0.0, 0.0), size), shape, f_ref)
        if score > best[0]:
            best = (score, k, -k * dy, -k * dx)
    return best


def _register(ref: np.ndarray, other: np.ndarray, guesses: list[float]) -> tuple[float, float, float]:
    """(k, oy, ox): other[k * y + oy, k * x + ox] ~ ref[y, x]. A pyramid: the scale grid around the
    guesses on maps reduced to COARSE_SIDE, then at each doubling of resolution +-2 steps of half the
    previous step, up to REG_SIDE; then least-squares refinement (`_refine`) on the full maps."""
    top = int(np.ceil(max(ref.shape) / REG_SIDE))
    ref_top, other_top = (_block_mean(ref, top), _block_mean(other, top)) if top > 1 else (ref, other)
    c = max(ref_top.shape) / COARSE_SIDE
    levels = []
    while c > 1.25:
        levels.append(c)
        c /= 2.0
    scales = [g * s for g in guesses for s in _COARSE_STEPS]
    step = _COARSE_STEP
    for c in levels:
        k = _best_scale(_reduce(ref_top, c), _reduce(other_top, c), scales)[1]
        step /= 2.0
        scales = [k * float(np.exp(i * step)) for i in range(-2, 3)]
    if not levels:
        k = _best_scale(ref_top, other_top, scales)[1]
        scales = [k * s for s in _FINE_STEPS]
    _, k, oy, ox = _best_scale(ref_top, other_top, scales)
    half = 0.5 * (top - 1.0)
    oy, ox = top * oy + half * (1.0 - k), top * ox + half * (1.0 - k)
    return _refine(ref, other, k, oy, ox)


def _refine(ref: np.ndarray, other: np.ndarray, k: float, oy: float, ox: float,
            iterations: int = 3) -> tuple[float, float, float]:
    """Gauss-Newton steps on (k, oy, ox) minimising the squared difference of the two maps (slightly
    blurred), on both reduced by an integer factor to about REFINE_SIDE px."""
    c = max(1, round(max(ref.shape) / REFINE_SIDE))
    half = 0.5 * (c - 1.0)
    if c > 1:
        ref, other = _block_mean(ref, c), _block_mean(other, c)
    oy, ox = (oy - half * (1.0 - k)) / c, (ox - half * (1.0 - k)) / c
    if k > 1.0:
        other = ndimage.gaussian_filter(other, sigma=0.45 * (k - 1.0) ** 0.5 * k ** 0.5, truncate=2.5)
    r = ndimage.gaussian_filter(ref, 1.0, truncate=2.5).astype(np.float64)
    ys = np.arange(ref.shape[0], dtype=np.float64)[:, None]
    xs = np.arange(ref.shape[1], dtype=np.float64)[None, :]
    for _ in range(iterations):
        m = ndimage.affine_transform(other, np.array([k, k]), offset=(oy, ox), output_shape=ref.shape, order=1,
                                     cval=0.0, prefilter=False)
        m = ndimage.gaussian_filter(m.astype(np.float64), 1.0, truncate=2.5)
        mask = _coverage_mask(other.shape, k, (oy, ox), ref.shape)
        gy, gx = np.gradient(m)
        gy, gx = gy * mask / k, gx * mask / k
        gs = gy * ys + gx * xs
        res = (r - m) * mask
        jac = [gs, gy, gx]
        ata = np.array([[float((p * q).sum()) for q in jac] for p in jac])
        atb = np.array([float((p * res).sum()) for p in jac])
        if np.linalg.cond(ata) > 1e12:
            break
        dk, doy, dox = np.linalg.solve(ata, atb)
        k, oy, ox = k + dk, oy + doy, ox + dox
    return k, c * oy + half * (1.0 - k), c * ox + half * (1.0 - k)


def _block_mean(img: np.ndarray, c: int) -> np.ndarray:
    """The image reduced by the integer factor c (mean of c x c blocks; the last partial rows/columns dropped)."""
    h, w = img.shape[0] // c, img.shape[1] // c
    return img[:h * c, :w * c].reshape(h, c, w, c).mean(axis=(1, 3), dtype=np.float32)


def _reduce(img: np.ndarray, c: float) -> np.ndarray:
    shape = (max(2, round(img.shape[0] / c)), max(2, round(img.shape[1] / c)))
    return _resample(img, c, (0.5 * c - 0.5, 0.5 * c - 0.5), shape)


def _tolerant_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel: how far each image is from the other's value range within 1 pixel (the larger)."""
    lo_b, hi_b = ndimage.minimum_filter(b, 3), ndimage.maximum_filter(b, 3)
    lo_a, hi_a = ndimage.minimum_filter(a, 3), ndimage.maximum_filter(a, 3)
    d_ab = np.maximum(np.maximum(a - hi_b, lo_b - a), 0.0)
    d_ba = np.maximum(np.maximum(b - hi_a, lo_a - b), 0.0)
    return np.maximum(d_ab, d_ba)


def _working(ink: np.ndarray) -> tuple[np.ndarray, float]:
    """The ink map resampled so its longer side is within MIN_SIDE..MAX_SIDE; (map, source px per working px)."""
    side = max(ink.shape)
    k = 1.0
    if side < MIN_SIDE:
        k = side / MIN_SIDE
    elif side > MAX_SIDE:
        k = side / MAX_SIDE
    if k == 1.0:
        return ink, 1.0
    return _reduce(ink, k), k


def register_maps(ink_a: np.ndarray, ink_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """(reference, other resampled onto it, mask of where both are, source px per working px of the
    reference) of two ink maps; None when no placement makes their frames overlap by MIN_COVERAGE."""
    if ink_a.size > ink_b.size:
        ink_a, ink_b = ink_b, ink_a
    aspect = abs(np.log(ink_a.shape[0] / ink_a.shape[1]) - np.log(ink_b.shape[0] / ink_b.shape[1]))
    if aspect > 2 * (1 - MIN_COVERAGE):  # no placement overlaps both frames enough
        return None
    ref, k_ref = _working(ink_a)
    # the other image, pre-reduced to about the reference's working scale (at most 2x finer)
    size_ratio = float(np.sqrt(ink_b.size / ink_a.size))
    pre = max(1.0, size_ratio * k_ref / 2.0) if k_ref > 1.0 else 1.0
    other = ink_b
    if pre > 1.0:
        other = _reduce(ink_b, pre)
    box_a, box_b = _content_box(ink_a), _content_box(ink_b)
    guesses = [size_ratio, float(np.sqrt(box_b[0] * box_b[1] / max(1, box_a[0] * box_a[1])))]
    guesses = [g * k_ref / pre for g in guesses]
    if abs(np.log(guesses[0] / guesses[1])) < 0.03:
        guesses = guesses[:1]
    k, oy, ox = _register(ref, other, guesses)
    moved = _resample(other, k, (oy, ox), ref.shape)
    covered = _coverage_mask(other.shape, k, (oy, ox), ref.shape)
    # the share of each picture's frame inside the overlap (the other's counted in the reference grid at scale k)
    area = float(covered.sum())
    if min(area / ref.size, area * k * k / other.size) < MIN_COVERAGE:
        return None
    return ref, moved, covered, k_ref


def difference_of_maps(ink_a: np.ndarray, ink_b: np.ndarray) -> float:
    """The score of two ink maps (see the module docstring): 0 the same, 1 as different as can be."""
    registered = register_maps(ink_a, ink_b)
    if registered is None:
        return 1.0
    ref, moved, covered, k_ref = registered
    e = max(2, round(EDGE / k_ref))
    rows, cols = np.nonzero(covered.any(axis=1))[0], np.nonzero(covered.any(axis=0))[0]
    covered = np.zeros_like(covered)
    if len(rows) > 2 * e and len(cols) > 2 * e:
        covered[rows[0] + e:rows[-1] + 1 - e, cols[0] + e:cols[-1] + 1 - e] = True
    size_ratio = float(np.sqrt(max(ink_a.size, ink_b.size) / min(ink_a.size, ink_b.size)))
    sigma = SHARPNESS / k_ref * float(np.sqrt(size_ratio**2 - 1.0))
    # the larger image may be the sharper one (a reduced copy) or not (an enlarged copy): both tried
    versions = [moved, ndimage.gaussian_filter(moved, sigma)] if sigma > 0.05 else [moved]
    a = ndimage.gaussian_filter(ref, BLUR, truncate=2.5) if k_ref >= 1.0 else ref
    scores = []
    for other in versions:
        if k_ref < 1.0:  # a small drawing, enlarged: 1-pixel tolerant difference, small window
            diff = np.maximum(_tolerant_difference(ref, other) - NOISE_SMALL, 0.0)
            window = max(3, round(WINDOW_SMALL / k_ref))
        else:  # full size: both blurred, plain difference, glyph-part window
            b = ndimage.gaussian_filter(other, BLUR, truncate=2.5)
            diff = np.maximum(np.abs(a - b) - NOISE, 0.0)
            window = WINDOW
        scores.append(float(ndimage.uniform_filter(diff * covered, window, mode="constant").max()))
    return min(scores)


def picture_difference(a: str | Path, b: str | Path) -> float:
    """How different the pictures in two image files are: 0 the same, 1 as different as can be."""
    return difference_of_maps(_ink_of(a), _ink_of(b))


def _ink_of(path: str | Path) -> np.ndarray:
    stat = os.stat(path)
    return _cached_ink_map(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)  # a problem checked against several candidates reads its picture once
def _cached_ink_map(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return ink_map(path)


def same_picture(a: str | Path, b: str | Path, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether two image files show the same picture (a copy re-encoded, rescaled, cropped, recoloured)."""
    return picture_difference(a, b) <= threshold
