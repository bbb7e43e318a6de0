"""The run report's parts: `collect` (numbers), `charts` (PNGs), `markdown` (report.md)."""
