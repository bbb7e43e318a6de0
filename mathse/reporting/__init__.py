"""The run report's parts: `collect` (numbers, section by section from the modules it names), `charts` (PNGs),
`markdown` (report.md)."""
