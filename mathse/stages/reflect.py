"""Stage 3 data (reflect): the teacher corrects wrong paths using the ORM's diagnosis.

For every incorrect path in the hard buffer across all evolve rounds (`evolve/sft_rejected.jsonl`):
the question, its images, the draft as numbered steps, the ORM's first wrong step and analysis
go to the teacher (prompt template `reflect.prompt`); its reply holds a reflection and a corrected
solution; the ORM re-judges the corrected path (`orm.policy`) and the ones judged correct are
kept. Kept rows `{instruction, input, draft, reflection, output}` (one per draft: several drafts
of a question are separate rows) are fused with D_SFT into `output/reflection_sft.jsonl` and the
LLaMA-Factory dataset `mathse_reflection_sft`, in the format `reflect.format` selects.

Resumable: teacher replies are journaled as they arrive (`reflect/teacher.jsonl`, besides the
client's on-disk cache) and verdicts in `orm_reflections/reflect.jsonl`; a rerun asks the teacher
and the ORM only for what is missing. The stage's marker is written last.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from mathse import layout
from mathse.client import ChatClient
from mathse.config import ConfigError, MathSEConfig, save_resolved_config
from mathse.errors import StageError
from mathse.fingerprint import API_VOLATILE, Inputs, Stale, check, settle
from mathse.judge import JudgeItem, PathJudge, journal_path
from mathse.llamafactory_bridge import SftExample, write_sharegpt_dataset
from mathse.messages import ChatRequest, ChatResult, user_message
from mathse.orm_serving import orm_endpoint, rule_only_notice
from mathse.prompts import reflection_prompt
from mathse.records import JudgedPathRow, Problem, ReflectionRow, SftRow
from mathse.storage import Journal, atomic_write_json, atomic_write_jsonl, is_done, iter_jsonl, mark_done, read_marker
from mathse.timing import StageTimer
from mathse.token_budget import TokenBudget
from mathse.usage import UsageLedger

STAGE = layout.REFLECT
DATASET_NAME = "mathse_reflection_sft"
_CORRECTED = re.compile(
    r"^\W*corrected\s+solution\W*:?\W*$|corrected\s+solution\s*\**\s*:", re.IGNORECASE | re.MULTILINE
)
_REFLECTION = re.compile(r"reflection\s*\**\s*:", re.IGNORECASE)


def stage_dir(cfg: MathSEConfig) -> Path:
    return layout.stage_dir(cfg, STAGE)


rows_path = layout.reflection_rows_path
fused_path = layout.reflection_sft_path


def finished(cfg: MathSEConfig) -> bool:
    return is_done(stage_dir(cfg))


def inputs(cfg: MathSEConfig) -> Inputs:
    """What the reflection data is made of: evolve's rounds (evolve.rounds too: more rounds mean more
    drafts), its rejected paths and D_SFT, the teacher's and the ORM's settings, the final token budget."""
    found = Inputs().value("evolve.rounds", cfg.evolve.rounds)
    for r in range(1, cfg.evolve.rounds + 1):
        found.marker(f"evolve round {r}", layout.round_dir(cfg, r))
    found.file("evolve's rejected paths", layout.evolve_file(cfg, "sft_rejected"))
    found.file("D_SFT", layout.latest_d_sft(cfg) or layout.d_sft_path(cfg, layout.EVOLVE))
    found.config(cfg, "reflect", exclude={"final_recipe", "final_from"}).config(cfg, "teacher", exclude=API_VOLATILE)
    if cfg.reflect.revalidate:
        found.judge(cfg)
    return found.budget("token budget of the final dataset", TokenBudget.for_training(cfg, "final"))


def stale(cfg: MathSEConfig) -> list[Stale]:
    """The reflection data, made from evolve results or settings that changed since. Redoing it
    drops the journals (keyed by draft, not by its text); answered teacher calls are in the cache."""
    discard = (stage_dir(cfg) / "teacher.jsonl", journal_path(cfg, STAGE))
    found = check("reflection data", stage_dir(cfg), inputs(cfg), discard=discard)
    return [found] if found is not None else []


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    return {
        "reflection rows (kept)": rows_path(cfg),
        "reflections dropped": layout.reflection_dropped_path(cfg),
        "reflection SFT data": fused_path(cfg),
        "reflection dataset": cfg.dataset_dir / f"{DATASET_NAME}.json",
    }


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    rejected_file = layout.evolve_file(cfg, "sft_rejected")
    d_sft_file = layout.latest_d_sft(cfg)
    if dry_run and (not rejected_file.is_file() or d_sft_file is None):
        print(f"[dry-run] reflect: would run on the incorrect paths of evolve ({rejected_file}, not there yet)")
        return 0
    if not rejected_file.is_file() or d_sft_file is None:
        evolve_dir = layout.stage_dir(cfg, layout.EVOLVE)
        raise StageError(f"reflect: no evolve results in {evolve_dir}: run --stage evolve first")
    drafts = select_drafts(cfg, [JudgedPathRow.model_validate(row).to_json() for row in iter_jsonl(rejected_file)])
    if dry_run:
        print(f"[dry-run] reflect: {len(drafts['keep'])} incorrect paths from {rejected_file} would go to the "
              f"teacher ({cfg.teacher.describe() if cfg.teacher else 'not configured'}); "
              f"{len(drafts['skipped'])} skipped (duplicates / per-question cap)")
        print(f"[dry-run] format {cfg.reflect.format}; re-validation {'on' if cfg.reflect.revalidate else 'off'} "
              f"(ORM {cfg.orm.backend}, policy {cfg.orm.policy}); fused with {d_sft_file} -> {fused_path(cfg)}")
        return 0
    settle(cfg, STAGE, stale(cfg))
    if finished(cfg):
        stats = read_marker(stage_dir(cfg))
        print(f"reflect: already done, nothing to do ({stats['kept']} kept of {stats['sent']}; {fused_path(cfg)})")
        return 0

    save_resolved_config(cfg, stage_dir(cfg) / "config.yaml")
    if cfg.reflect.revalidate and (notice := rule_only_notice(cfg, STAGE)) is not None:
        print(notice)
    drafts_to_send = drafts["keep"]
    timer = StageTimer()
    with timer.span("api"):
        replies = ask_teacher(cfg, drafts_to_send)
    retry = [key for key, reply in replies.items() if reply.get("retryable")]
    if retry:  # a flaky API must not cost drafts: no marker, the rerun asks just these again
        raise StageError(f"reflect: {len(retry)} teacher calls failed after their retries (first: {retry[0]}: "
                         f"{replies[retry[0]]['error']}); rerun the same command to retry just those")
    with timer.span("api" if cfg.orm.backend in ("api", "trained") else "model"):
        kept, dropped = build_rows(cfg, drafts_to_send, replies)
    dropped += [{"key": d["key"], "id": d["id"], "reason": d["skip_reason"]} for d in drafts["skipped"]]
    atomic_write_jsonl(rows_path(cfg), kept)
    atomic_write_jsonl(layout.reflection_dropped_path(cfg), dropped)
    fused = fuse(cfg, d_sft_file, kept)
    reasons = Counter(d["reason"].split(":")[0] for d in dropped)
    stats = {"sent": len(drafts_to_send), "kept": len(kept), "dropped": dict(reasons),
             "d_sft": fused - len(kept), "fused": fused, "format": cfg.reflect.format}
    atomic_write_json(stage_dir(cfg) / layout.STATS, stats)
    timer.save(stage_dir(cfg) / "timings.json")
    mark_done(stage_dir(cfg), {**stats, "consumed": inputs(cfg).record()})
    print(f"reflect: sent {stats['sent']} drafts, kept {stats['kept']}, dropped "
          f"{sum(reasons.values())} ({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'none'}); "
          f"reflection SFT {fused} rows -> {fused_path(cfg)}")
    return 0


def select_drafts(cfg: MathSEConfig, rejected: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every incorrect path once: identical drafts of a question are one, capped per question."""
    keep: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    per_question: Counter[str] = Counter()
    cap = cfg.reflect.max_drafts_per_question
    for row in rejected:
        row = {**row, "key": f"{row['id']}#r{row['round']}#s{row['sample']}"}
        if (row["id"], row["reasoning"]) in seen:
            skipped.append({**row, "skip_reason": "duplicate draft"})
        elif cap is not None and per_question[row["id"]] >= cap:
            skipped.append({**row, "skip_reason": "over reflect.max_drafts_per_question"})
        else:
            seen.add((row["id"], row["reasoning"]))
            per_question[row["id"]] += 1
            keep.append(row)
    return {"keep": keep, "skipped": skipped}


def ask_teacher(cfg: MathSEConfig, drafts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The teacher's reply per draft key; journaled as each arrives, so a kill loses none."""
    teacher = cfg.teacher
    if teacher is None and drafts:
        raise ConfigError([f"config error: teacher: required: {len(drafts)} drafts to reflect on"])
    with Journal(stage_dir(cfg) / "teacher.jsonl") as journal:
        pending = [d for d in drafts if d["key"] not in journal]
        failed: dict[str, dict[str, Any]] = {}  # not journaled: a rerun asks again
        if pending and teacher is not None:
            # Built one at a time as the client's in-flight window has room; images encoded when sent.
            requests = (ChatRequest(key=d["key"], messages=[user_message(reflection_prompt(cfg, JudgedPathRow(**d)),
                                                                         d["images"])])
                        for d in pending)
            ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
            client = ChatClient(teacher, cfg.api_cache_dir, ledger=ledger, stage=STAGE)

            def journal_it(result: ChatResult) -> None:
                if result.ok:  # failures are not journaled: a rerun asks again
                    journal.append({"key": result.key, "text": result.text})
                else:
                    failed[result.key] = {"error": result.error, "retryable": result.retryable}

            try:
                client.complete_many_sync(requests, on_result=journal_it, progress="reflect teacher",
                                          collect=False, total=len(pending))
            finally:
                ledger.save()
        return {d["key"]: journal.get(d["key"]) or failed.get(d["key"]) or {"error": "no reply"} for d in drafts}


def split_reply(text: str) -> tuple[str, str] | None:
    """(reflection, corrected solution) from the teacher's reply, or None without a solution part."""
    # The last marker: a reflection may mention "corrected solution" in passing.
    match = next(reversed(list(_CORRECTED.finditer(text))), None)
    if match is None:
        return None
    corrected = text[match.end():].strip()
    head = text[: match.start()]
    found = _REFLECTION.search(head)
    reflection = (head[found.end():] if found else head).strip().strip("*").strip()
    return (reflection, corrected) if corrected else None


def build_rows(
    cfg: MathSEConfig, drafts: list[dict[str, Any]], replies: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parse replies, re-judge the corrected paths, keep the ones judged correct."""
    dropped: list[dict[str, Any]] = []
    parsed: dict[str, tuple[str, str]] = {}
    for d in drafts:
        reply = replies[d["key"]]
        if "text" not in reply:
            dropped.append({"key": d["key"], "id": d["id"], "reason": f"teacher call failed: {reply['error']}"})
        elif (parts := split_reply(reply["text"])) is None:
            reason = "unparseable teacher reply: no corrected solution"
            dropped.append({"key": d["key"], "id": d["id"], "reason": reason, "raw": reply["text"]})
        else:
            parsed[d["key"]] = parts

    verdicts = revalidate(cfg, [d for d in drafts if d["key"] in parsed], parsed) if cfg.reflect.revalidate else {}
    kept: list[dict[str, Any]] = []
    for d in drafts:
        if d["key"] not in parsed:
            continue
        reflection, corrected = parsed[d["key"]]
        verdict = verdicts.get(d["key"])
        if cfg.reflect.revalidate and (verdict is None or verdict["final"]["correct"] is not True):
            if verdict is None:
                reason = "ORM call failed"
            elif verdict["final"]["correct"] is None:  # unknown is not wrong: counted apart
                reason = "unknown: the ORM's verdict on the corrected path could not be read"
            else:
                reason = f"ORM rejected the corrected path: {(verdict['final'].get('analysis') or '').strip()[:200]}"
            dropped.append({"key": d["key"], "id": d["id"], "reason": reason, "corrected": corrected})
            continue
        kept.append(ReflectionRow(
            instruction=d["prompt"], input="", draft=d["reasoning"], reflection=reflection, output=corrected,
            id=d["id"], key=d["key"], images=d["images"], answer=d["answer"], round=d["round"],
            error_step=d.get("error_step"), analysis=d.get("analysis"),
        ).to_json())
    return kept, dropped


def revalidate(
    cfg: MathSEConfig, drafts: list[dict[str, Any]], parsed: dict[str, tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    items = [
        JudgeItem(d["key"], Problem(id=d["id"], question=d["question"], images=tuple(d["images"]), answer=d["answer"]),
                  parsed[d["key"]][1])
        for d in drafts
    ]
    ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
    with orm_endpoint(cfg, layout.servers_dir(layout.stage_dir(cfg, STAGE))) as endpoint:
        judge = PathJudge(cfg, STAGE, ledger, endpoint=endpoint)
        try:
            with Journal(journal_path(cfg, STAGE)) as journal:
                stats = judge.judge(items, journal, progress="reflect judge")
                rows = dict(journal.items())
        finally:
            judge.close()
            ledger.save()
    print(stats.summary_line())
    if stats.failed:
        raise StageError(f"reflect: {stats.failed} ORM calls failed; rerun the same command to retry just those")
    return rows


def training_response(row: dict[str, Any], fmt: str) -> str:
    """The SFT target of a kept row: the corrected path, or the reflection + the corrected path.

    The draft is never part of a target: with format "reflection" it is an earlier turn of the
    sample (see `reflection_turns`), masked out of the loss in the final training.
    """
    if fmt == "corrected":
        return row["output"]
    return f"Reflection: {row['reflection']}\n\nCorrected solution:\n{row['output']}"


def diagnosis_turn(row: dict[str, Any]) -> str:
    """The user turn after the draft in a reflection sample: the ORM's diagnosis of it."""
    step = row.get("error_step")
    where = f"the first error is at step {step}" if step else "the solution contains an error"
    analysis = (row.get("analysis") or "").strip()
    return (f"A reviewer checked your solution: {where}." + (f" {analysis}" if analysis else "")
            + "\nReflect on the mistake, then write a corrected step-by-step solution.")


def fuse(cfg: MathSEConfig, d_sft_file: Path, kept: list[dict[str, Any]]) -> int:
    """D_SFT + kept reflections -> reflection_sft.jsonl and its LLaMA-Factory dataset."""
    fused = [
        {"instruction": r.prompt, "input": "", "output": r.response, "images": r.images, "id": r.id,
         "origin": r.origin}
        for r in map(SftRow.model_validate, iter_jsonl(d_sft_file))
    ]
    multi_turn = cfg.reflect.format == "reflection"
    # format reflection: LLaMA-Factory's alpaca convention, `history` holds the earlier turns
    # (question -> draft) and `instruction` the current one (the diagnosis).
    fused += [
        {"instruction": diagnosis_turn(r) if multi_turn else r["instruction"], "input": "",
         "output": training_response(r, cfg.reflect.format), "images": r["images"], "id": r["id"],
         "origin": "reflection", "draft": r["draft"], "reflection": r["reflection"],
         **({"history": [[r["instruction"], r["draft"]]]} if multi_turn else {})}
        for r in kept
    ]
    atomic_write_jsonl(fused_path(cfg), fused)
    examples = (
        SftExample(prompt=r["instruction"], response=r["output"], images=tuple(r["images"]), id=r["id"],
                   history=tuple((u, a) for u, a in r.get("history", ())))
        for r in fused
    )
    return write_sharegpt_dataset(examples, cfg.dataset_dir, DATASET_NAME, TokenBudget.for_training(cfg, "final"))
