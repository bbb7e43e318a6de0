"""Training data for LLaMA-Factory: sharegpt datasets, counted against the token budget, and their registration."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathse.run.errors import DataError
from mathse.run.records import SftExample
from mathse.run.storage import atomic_open, atomic_write_json, atomic_write_text, read_json

if TYPE_CHECKING:
    from mathse.model.token_budget import TokenBudget


DATASET_INFO = "dataset_info.json"
IMAGE_TOKEN = "<image>"


def to_sharegpt(example: SftExample) -> dict[str, Any]:
    """The sharegpt row LLaMA-Factory expects: one `<image>` tag per image in the first user turn."""
    messages: list[dict[str, str]] = []
    if example.system:
        messages.append({"role": "system", "content": example.system})
    tags = IMAGE_TOKEN * len(example.images)
    for user, assistant in example.history:
        messages.append({"role": "user", "content": tags + user})
        messages.append({"role": "assistant", "content": assistant})
        tags = ""
    messages.append({"role": "user", "content": tags + example.prompt})
    messages.append({"role": "assistant", "content": example.response})
    row: dict[str, Any] = {"messages": messages}
    if example.images:
        row["images"] = list(example.images)
    return row


def write_sharegpt_dataset(
    examples: Iterable[SftExample], dataset_dir: Path, name: str, budget: TokenBudget | None = None
) -> int:
    """Stream `examples` into `<dataset_dir>/<name>.json` (a JSON array) and register it.

    Streaming keeps memory flat for hundreds of thousands of rows; the file is written to a temp
    name and renamed, and registered in dataset_info.json only after, so a kill leaves either the
    previous dataset or the new one.

    With a `budget`, an example that cannot keep its image tokens within the training's cutoff_len
    is left out and listed in `<name>.too_long.jsonl` (or, with `llama_factory.too_long: stop`,
    nothing is written and DataError says how many and what cutoff_len would fit them).
    """
    file_name = f"{name}.json"
    count = 0
    too_long: list[dict[str, Any]] = []
    with atomic_open(dataset_dir / file_name) as handle:
        handle.write("[")
        for example in examples:
            needed = budget.needed(example) if budget is not None else None
            if needed is not None:
                too_long.append({"id": example.id, "tokens": needed, "images": list(example.images),
                                 "prompt": example.prompt[:200]})
                continue
            handle.write(",\n" if count else "\n")
            handle.write(json.dumps(to_sharegpt(example), ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
        if too_long and budget is not None:
            _report_too_long(too_long, dataset_dir / f"{name}.too_long.jsonl", name, budget, count)
    if budget is not None and not too_long:
        (dataset_dir / f"{name}.too_long.jsonl").unlink(missing_ok=True)
    register_dataset(dataset_dir, name, file_name)
    return count


def _report_too_long(rows: list[dict[str, Any]], listing: Path, name: str, budget: TokenBudget, kept: int) -> None:
    atomic_write_text(listing, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    longest = max(r["tokens"] for r in rows)
    limit = f"{budget.where}={budget.cutoff_len}"
    if kept == 0:
        raise DataError(f"dataset {name}: none of its {len(rows)} examples keeps its image tokens within {limit}; "
                        f"cutoff_len {longest} fits them all (listed in {listing})")
    if budget.policy == "stop":
        raise DataError(f"dataset {name}: {len(rows)} examples would lose image tokens to {limit}; cutoff_len "
                        f"{longest} fits them all (listed in {listing}): raise it, or set llama_factory.too_long: "
                        f"drop to leave them out")
    print(f"dataset {name}: left out {len(rows)} examples whose image tokens do not fit {limit} (cutoff_len "
          f"{longest} fits them all); listed in {listing}", flush=True)


def register_dataset(dataset_dir: Path, name: str, file_name: str) -> None:
    """Add or update the dataset's entry in dataset_info.json, keeping other entries."""
    info_path = dataset_dir / DATASET_INFO
    info = read_json(info_path) if info_path.exists() else {}
    info[name] = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
    atomic_write_json(info_path, info)
