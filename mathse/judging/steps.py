"""Splitting reasoning paths into numbered steps: the single source of step numbering.

Convention (shared by generation, the ORM, reflection and reports):

* ``split_steps(text)`` returns the steps of a path in order; steps are
  **1-based**, so a verdict's ``error_step = k`` refers to ``steps[k - 1]``.
* ``number_steps(steps)`` renders them as ``"Step 1: ...\\nStep 2: ..."``, the
  exact form the ORM is shown, so the ORM's step numbers are ours.

Splitting rules, first that yields at least two steps wins:

1. explicit step markers at line starts: ``Step 1:``, ``**Step 1**``,
   ``### Step 1.``, ``第1步`` / ``第一步``, ``步骤1``; numbers must run 1, 2, 3...
   (a later "as in step 1" is text, not a marker);
2. inline markers ``Step 1: ... Step 2: ...`` in running text;
3. a numbered list ``1. ...`` / ``2) ...`` at line starts, numbers running 1, 2, 3...;
4. markdown headings (``#``..``######``);
5. blank-line-separated paragraphs;
6. non-empty lines.

Text before the first marker is kept in step 1 and text after the last marker
(including the final-answer line) stays in the last step, so no text is lost.
For paragraph/line splits a trailing final-answer-only chunk is merged into the
previous step.  Non-empty text always yields at least one step.
"""

from __future__ import annotations

import re

__all__ = ["number_steps", "split_steps"]

_CN_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}

# "Step 1:", "**Step 1.**", "## Step 1 -", "第1步", "第一步：", "步骤 1：".
_LINE_MARKER_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?P<bold>\*\*|__)?[ \t]*"
    r"(?:(?i:step)[ \t]*(?P<n1>\d+)|第[ \t]*(?P<n2>\d+|[一二三四五六七八九十]+)[ \t]*步|步骤[ \t]*(?P<n3>\d+))"
    r"[ \t]*(?:[:：.)\-–—][ \t]*)?(?P<close>\*\*|__)?[ \t]*(?:[:：.][ \t]*)?",
    re.MULTILINE,
)
# Inline markers need a capital "Step N" followed by ':' or '.' so "in step 2 we" is not one.
_INLINE_MARKER_RE = re.compile(r"(?<![A-Za-z])(?:\*\*)?Step[ \t]*(?P<n1>\d+)[ \t]*(?:\*\*)?[:：.](?:\*\*)?[ \t]*")
_LIST_RE = re.compile(r"^[ \t]*(?P<n1>\d+)[.)](?=[ \t]+\S)[ \t]*", re.MULTILINE)
_HEADING_RE = re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.MULTILINE)
# A chunk that only states the final answer ("Therefore, the final answer is $5$.", "\\boxed{5}").
_FINAL_ONLY_RE = re.compile(
    r"^\W*(?:(?:so|thus|therefore|hence|所以|因此|综上所?述?)\W*)?"
    r"(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|：)|(?:最终)?答案\s*(?:是|为|:|：)|####|\$*\\boxed\{)",
    re.IGNORECASE,
)


def _marker_number(match: re.Match[str]) -> int | None:
    for name in ("n1", "n2", "n3"):
        value = match.groupdict().get(name)
        if value:
            if value.isdigit():
                return int(value)
            return _cn_number(value)
    return None


def _cn_number(value: str) -> int | None:
    """Chinese numerals up to 99 ("三", "十二", "二十三")."""
    if "十" not in value:
        return _CN_DIGITS.get(value) if len(value) == 1 else None
    tens, _, ones = value.partition("十")
    t = _CN_DIGITS.get(tens, 0) if tens else 1
    o = _CN_DIGITS.get(ones, 0) if ones else 0
    return t * 10 + o if t < 10 and o < 10 else None


def _sequential(matches: list[re.Match[str]]) -> list[re.Match[str]]:
    """Markers whose numbers run 1, 2, 3... in text order; other matches are ignored."""
    chosen: list[re.Match[str]] = []
    for match in matches:
        if _marker_number(match) == len(chosen) + 1:
            chosen.append(match)
    return chosen


def _same_indent(matches: list[re.Match[str]]) -> list[re.Match[str]]:
    """List items at the indentation of the first '1.' (nested sub-lists are step text)."""
    first = next((m for m in matches if _marker_number(m) == 1), None)
    if first is None:
        return []
    indent = len(first.group(0)) - len(first.group(0).lstrip(" \t"))
    return [m for m in matches if len(m.group(0)) - len(m.group(0).lstrip(" \t")) == indent]


def _strip_dangling_bold(body: str, marker: re.Match[str]) -> str:
    """'**Step 1: Find x.** Then...' leaves 'Find x.** Then...': drop the orphan '**'."""
    if marker.groupdict().get("bold") and not marker.groupdict().get("close"):
        first, sep, rest = body.partition("\n")
        for token in ("**", "__"):
            if token in first:
                first = first.replace(token, "", 1)
                break
        body = first + sep + rest
    return body


def _cut(text: str, markers: list[re.Match[str]]) -> list[str]:
    """Split at markers; the preamble joins step 1, the marker itself is dropped."""
    steps: list[str] = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        body = _strip_dangling_bold(text[marker.end() : end], marker).strip()
        steps.append(body)
    preamble = text[: markers[0].start()].strip()
    if preamble:
        steps[0] = f"{preamble}\n{steps[0]}".strip()
    return steps


def _cut_keep(text: str, starts: list[int]) -> list[str]:
    """Split at positions keeping the text there (headings stay in their section)."""
    bounds = [*starts, len(text)]
    steps = [text[bounds[i] : bounds[i + 1]].strip() for i in range(len(starts))]
    preamble = text[: starts[0]].strip()
    if preamble:
        steps[0] = f"{preamble}\n{steps[0]}".strip()
    return steps


def _merge_final_answer(chunks: list[str]) -> list[str]:
    """Keep a trailing 'The final answer is X' chunk inside the last real step."""
    last = chunks[-1] if chunks else ""
    if len(chunks) >= 2 and "\n" not in last and len(last) <= 200 and _FINAL_ONLY_RE.match(last):
        return [*chunks[:-2], f"{chunks[-2]}\n{chunks[-1]}"]
    return chunks


def split_steps(text: str) -> list[str]:
    """Split a reasoning path into its steps (1-based by convention; see module doc).

    Returns ``[]`` only for empty/whitespace text; otherwise at least one step.
    Empty steps (e.g. a marker with nothing after it) are kept so numbering
    matches what the model wrote.
    """
    if not text or not text.strip():
        return []
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()

    for pattern in (_LINE_MARKER_RE, _INLINE_MARKER_RE):
        markers = _sequential(list(pattern.finditer(text)))
        if len(markers) >= 2:
            return _cut(text, markers)
    # A lone "Step 1:" at the very start would otherwise be rendered "Step 1: Step 1: ...".
    lone = _LINE_MARKER_RE.match(text)
    if lone and _marker_number(lone) == 1:
        text = _strip_dangling_bold(text[lone.end() :], lone).strip() or text

    items = _sequential(_same_indent(list(_LIST_RE.finditer(text))))
    if len(items) >= 2:
        return _cut(text, items)

    headings = [m.start() for m in _HEADING_RE.finditer(text)]
    if len(headings) >= 2:
        return _cut_keep(text, headings)

    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if len(paragraphs) >= 2:
        merged = _merge_final_answer(paragraphs)
        if len(merged) >= 2:
            return merged

    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) >= 2:
        return _merge_final_answer(lines)
    return [text]


def number_steps(steps: list[str]) -> str:
    """Render steps as ``Step 1: ...\\nStep 2: ...`` (the form shown to the ORM)."""
    return "\n".join(f"Step {i}: {step.strip()}" for i, step in enumerate(steps, start=1))
