"""LLaMA-Factory's ChatModel as shipped, without mathse's Qwen-VL positions adapter: the reference run
that shows what the adapter changes (tests/model/test_engine_agreement.py, benchmarks/bench_engine_agreement.py).

It runs in a fresh process because the adapter, once installed, is installed process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mathse.model.generation_items import user_turn
from mathse.run.records import Problem

__all__ = ["shipped_greedy_texts"]

_SCRIPT = """
import json, sys
from PIL import Image
from llamafactory.chat import ChatModel
chat = ChatModel(dict(model_name_or_path=sys.argv[1], template="qwen2_vl", infer_backend="huggingface",
                      do_sample=False, max_new_tokens=int(sys.argv[3]), image_max_pixels=int(sys.argv[4])))
for p in json.load(open(sys.argv[2])):
    reply = chat.chat([{"role": "user", "content": p["turn"]}], images=[Image.open(p["image"]).convert("RGB")])
    print("TEXT " + json.dumps([p["id"], reply[0].response_text]))
"""


def shipped_greedy_texts(model: Path, problems: Sequence[Problem], max_new_tokens: int,
                         image_max_pixels: int = 12544) -> dict[str, str]:
    """Problem id -> the greedy answer of the shipped in-process engine (the pipeline's user turn)."""
    payload = [{"id": p.id, "turn": user_turn(p), "image": p.images[0]} for p in problems]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as listing:
        json.dump(payload, listing)
        listing.flush()
        argv = [sys.executable, "-c", _SCRIPT, str(model), listing.name, str(max_new_tokens), str(image_max_pixels)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the shipped ChatModel failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line[5:]) for line in done.stdout.splitlines() if line.startswith("TEXT ")]
    return dict(rows)
