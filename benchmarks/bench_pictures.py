"""The data check's picture comparison (mathse/data/pictures.py) on real-size diagrams (issue 29).

~60 synthetic diagrams 200-1000 px of three kinds (geometry with labels, bar charts with numbers,
function plots with tick labels; labels 10-16 px high), each against its copies under the detection
benchmark's image transformations (bench_data_check.IMAGE_T) and against the same diagram with one
label digit changed (also then JPEG-encoded): acceptance at the shipped threshold, per kind and
width, and ms per pair (files read included). The demo's small drawings: bench_data_check.py detection.

    python benchmarks/bench_pictures.py [--n 60]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_data_check as bdc  # noqa: E402

from mathse.data import pictures as verify  # noqa: E402


def _change_digit(label: str, rng: random.Random) -> str:
    """The label with one of its digits replaced by another digit."""
    positions = [i for i, ch in enumerate(label) if ch.isdigit()]
    i = rng.choice(positions)
    new = str((int(label[i]) + rng.randint(1, 9)) % 10)
    return label[:i] + new + label[i + 1:]


def geometry(w: int, h: int, font_px: int, rng: random.Random) -> tuple[list, list[str]]:
    """(drawing spec, labels): polygons, a circle and labels near vertices."""
    points = [(rng.randint(w // 10, 7 * w // 10), rng.randint(h // 10, 8 * h // 10)) for _ in range(6)]
    labels = [str(rng.randint(1, 99)) for _ in range(5)] + ["A", "B", "C"]
    return [("geometry", points, font_px)], labels


def bars(w: int, h: int, font_px: int, rng: random.Random) -> tuple[list, list[str]]:
    n = rng.randint(3, 7)
    values = [rng.randint(5, 95) for _ in range(n)]
    return [("bars", values, font_px)], [str(v) for v in values] + [str(10 * i) for i in range(0, 101, 25)]


def plot(w: int, h: int, font_px: int, rng: random.Random) -> tuple[list, list[str]]:
    a, b, c = rng.uniform(0.5, 2.0), rng.uniform(0.5, 3.0), rng.uniform(0, 3)
    ticks = [str(i) for i in range(-5, 6)] + [str(i) for i in range(-2, 3)]
    return [("plot", (a, b, c), font_px)], ticks


def render(w: int, h: int, spec: list, labels: list[str]) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    kind, params, font_px = spec[0]
    font = ImageFont.load_default(size=font_px)
    if kind == "geometry":
        points = params
        draw.polygon(points[:3], outline="black", width=2)
        draw.line(points[3:5], fill="black", width=2)
        cx, cy = points[5]
        r = min(w, h) // 8
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(40, 40, 160), width=2)
        for i, label in enumerate(labels):
            x, y = points[i % len(points)]
            draw.text((x + 6 + (i // len(points)) * 3 * font_px, y - 4), label, fill="black", font=font)
    elif kind == "bars":
        n = len(params)
        x0, y0, x1, y1 = int(0.12 * w), int(0.08 * h), int(0.95 * w), int(0.88 * h)
        draw.line((x0, y0, x0, y1), fill="black", width=2)
        draw.line((x0, y1, x1, y1), fill="black", width=2)
        for j, tick in enumerate(labels[n:]):
            y = y1 - (y1 - y0) * j / 4
            draw.line((x0 - 4, y, x0, y), fill="black", width=1)
            draw.text((x0 - 6, y), tick, fill="black", font=font, anchor="rm")
        bw = (x1 - x0) / n
        for i in range(n):
            top = y1 - (y1 - y0) * params[i] / 100
            draw.rectangle((x0 + bw * (i + 0.2), top, x0 + bw * (i + 0.8), y1), fill=(90, 140, 200), outline="black")
            draw.text((x0 + bw * (i + 0.5), top - 3), labels[i], fill="black", font=font, anchor="md")
    else:
        a, b, c = params
        x0, y0, x1, y1 = int(0.06 * w), int(0.06 * h), int(0.94 * w), int(0.94 * h)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.line((x0, cy, x1, cy), fill="black", width=1)
        draw.line((cx, y0, cx, y1), fill="black", width=1)
        sx, sy = (x1 - x0) / 11, (y1 - y0) / 5
        for j, tick in enumerate(labels[:11]):
            x = cx + (j - 5) * sx
            draw.line((x, cy - 3, x, cy + 3), fill="black", width=1)
            if tick != "0":
                draw.text((x, cy + 5), tick, fill="black", font=font, anchor="mt")
        for j, tick in enumerate(labels[11:]):
            y = cy - (j - 2) * sy
            draw.line((cx - 3, y, cx + 3, y), fill="black", width=1)
            if tick != "0":
                draw.text((cx - 5, y), tick, fill="black", font=font, anchor="rm")
        pts = []
        for k in range(400):
            t = -5.5 + 11 * k / 399
            v = a * math.sin(b * t + c)
            pts.append((cx + t * sx, cy - v * sy))
        draw.line(pts, fill=(200, 40, 40), width=2)
    return img


KINDS = {"geometry": geometry, "bars": bars, "plot": plot}


def build(n: int, folder: Path) -> list[tuple[str, int, str, Path, Path]]:
    """(kind, width, case, original path, other path) of every pair."""
    rng = random.Random(3)
    pairs = []
    for i in range(n):
        kind = list(KINDS)[i % 3]
        w = rng.choice((200, 300, 500, 800, 1000))
        h = int(w * rng.uniform(0.6, 1.0))
        font_px = rng.randint(10, 16)
        spec, labels = KINDS[kind](w, h, font_px, rng)
        orig = render(w, h, spec, labels)
        changed = list(labels)
        digits = [j for j, lab in enumerate(labels) if any(ch.isdigit() for ch in lab) and lab != "0"]
        j = rng.choice(digits)
        changed[j] = _change_digit(labels[j], rng)
        other = render(w, h, spec, changed)
        base = folder / f"{i}.png"
        orig.save(base)
        cases = {name: t(orig, rng) for name, t in bdc.IMAGE_T.items()}
        cases["one digit changed"] = other
        cases["digit changed + jpeg"] = bdc.jpeg(other)
        for name, img in cases.items():
            p = folder / f"{i}-{name}.{'jpeg' if 'jpeg' in name else 'png'}"
            img.save(p, **({"quality": 70} if "jpeg" in name else {}))
            pairs.append((kind, w, name, base, p))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    by_kind: dict[tuple[str, str], list[float]] = {}
    by_size: dict[tuple[str, int], list[float]] = {}
    times: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, w, name, a, b in build(args.n, Path(tmp)):
            start = time.perf_counter()
            score = verify.picture_difference(a, b)
            times.setdefault(w, []).append(1e3 * (time.perf_counter() - start))
            rows.setdefault(name, []).append(score)
            by_kind.setdefault((name, kind), []).append(score)
            by_size.setdefault((name, w), []).append(score)
    t = verify.DEFAULT_THRESHOLD
    print(f"| pair ({args.n} diagrams, 200-1000 px, labels 10-16 px) | accepted at <= {t} | "
          "geometry | bars | plot | min score | median | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, scores in rows.items():
        s = sorted(scores)
        acc = sum(x <= t for x in s) / len(s)
        per = [by_kind[(name, k)] for k in KINDS]
        kinds = " | ".join(f"{100 * sum(x <= t for x in v) / len(v):.0f}%" for v in per)
        print(f"| {name} | {100 * acc:.0f}% | {kinds} | {s[0]:.3f} | {s[len(s) // 2]:.3f} | {s[-1]:.3f} |")
    widths = sorted({w for _, w in by_size})
    print("| accepted by width (diagrams) | " + " | ".join(
        f"{w} px ({len(by_size[(next(iter(rows)), w)])})" for w in widths) + " |")
    print("|---|" + "---:|" * len(widths))
    for name in rows:
        print(f"| {name} | " + " | ".join(
            f"{100 * sum(x <= t for x in by_size[(name, w)]) / len(by_size[(name, w)]):.0f}%" for w in widths) + " |")
    print("| width px | pairs | p50 ms | p95 ms | max ms |")
    print("|---:|---:|---:|---:|---:|")
    for w, ts in sorted(times.items()):
        ts.sort()
        print(f"| {w} | {len(ts)} | {ts[len(ts) // 2]:.0f} | {ts[int(0.95 * (len(ts) - 1))]:.0f} | {ts[-1]:.0f} |")


if __name__ == "__main__":
    main()
