"""A completion marker's ``consumed`` fingerprint, summarised for the report.

`mathse.run.fingerprint.Inputs.record` writes ``{"files": {label: {path, size, mtime_ns, sha256} | None},
"markers": {label: sha256 | None}, "values": {label: config value}}`` into a unit's marker. The report
keeps what identifies each input (a file's name, size and hash; a marker's hash) and only the labels of
the config values (a whole teacher config is no number to report); report.md shows hashes by their
first characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONSUMED = "consumed"  # the marker key `Inputs.record` fills
SHORT_HASH = 8  # characters of a hash shown in report.md


def split_consumed(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the marker's counts without the fingerprint, the fingerprint summarised; None without one)."""
    counts = {k: v for k, v in stats.items() if k != CONSUMED}
    return counts, summarise(stats.get(CONSUMED))


def summarise(consumed: Any) -> dict[str, Any] | None:
    """``{"files": [{label, name, size, sha256}], "markers": [{label, sha256}], "settings": [label]}``
    from a marker's ``consumed`` (None when it holds none or is not a fingerprint); an input that was
    absent has None for its name / hash."""
    if not isinstance(consumed, dict):
        return None
    files, markers, values = (consumed.get(k) for k in ("files", "markers", "values"))
    summary: dict[str, Any] = {"files": [], "markers": [], "settings": []}
    for label, identity in (files if isinstance(files, dict) else {}).items():
        known = identity if isinstance(identity, dict) else {}
        path = known.get("path")
        summary["files"].append({"label": str(label), "name": Path(path).name if isinstance(path, str) else None,
                                 "size": known.get("size"), "sha256": _text(known.get("sha256"))})
    for label, digest in (markers if isinstance(markers, dict) else {}).items():
        summary["markers"].append({"label": str(label), "sha256": _text(digest)})
    summary["settings"] = [str(label) for label in (values if isinstance(values, dict) else {})]
    return summary


def input_lines(summary: dict[str, Any]) -> list[str]:
    """One short line per input, e.g. ``data.seed_file: seed.jsonl (sha256 1a2b3c4d)``; the settings on one line."""
    lines = [f"{f['label']}: " + (f"{f['name']} ({short_hash(f['sha256'])})" if f["name"] else "absent")
             for f in summary.get("files", [])]
    lines += [f"{m['label']}: " + (f"completion marker ({short_hash(m['sha256'])})" if m["sha256"] else "not done")
              for m in summary.get("markers", [])]
    if summary.get("settings"):
        lines.append("settings: " + ", ".join(summary["settings"]))
    return lines


def short_hash(digest: str | None) -> str:
    """``sha256 1a2b3c4d``: a hash by its first characters."""
    return f"sha256 {digest[:SHORT_HASH]}" if digest else "no hash"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
