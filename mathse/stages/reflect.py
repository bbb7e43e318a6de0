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

import contextlib
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult, user_message
from mathse.judging.judge import JudgeItem, PathJudge, journal_path
from mathse.judging.orm_endpoint import orm_endpoint, rule_only_notice
from mathse.model.prompts import reflection_prompt
from mathse.model.token_budget import TokenBudget
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run import layout
from mathse.run.config import ConfigError, MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import API_VOLATILE, Inputs, Stale, check, settle
from mathse.run.records import JudgedPathRow, Problem, ReflectionRow, SftExample, SftRow
from mathse.run.storage import (
    Journal,
    atomic_open,
    atomic_write_json,
    atomic_write_jsonl,
    is_done,
    iter_jsonl,
    mark_done,
    read_marker,
    write_line,
)
from mathse.run.timing import StageTimer
from mathse.run.usage import UsageLedger

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
    # The feedback keys count only when set off their default (runs marked before them stay valid).
    unused = {"feedback", "teacher_prompt"} if cfg.reflect.feedback == "orm" else set()
    found.config(cfg, "reflect", exclude={"final_recipe", "final_from", *unused})
    found.config(cfg, "teacher", exclude=API_VOLATILE)
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
    # Every pass below streams the rejected paths from their file: nothing per draft is held but
    # keys and digests, so 280K drafts cost what 1K do.
    selection = Counter("keep" if skip is None else "skip" for _, skip in iter_drafts(cfg, rejected_file))
    to_send = selection["keep"]
    if dry_run:
        print(f"[dry-run] reflect: {to_send} incorrect paths from {rejected_file} would go to the "
              f"teacher ({cfg.teacher.describe() if cfg.teacher else 'not configured'}); "
              f"{selection['skip']} skipped (duplicates / per-question cap)")
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
    timer = StageTimer()
    with timer.span("api"):
        failed = ask_teacher(cfg, rejected_file, to_send)
    retry = [key for key, reply in failed.items() if reply["retryable"]]
    if retry:  # a flaky API must not cost drafts: no marker, the rerun asks just these again
        raise StageError(f"reflect: {len(retry)} teacher calls failed after their retries (first: {retry[0]}: "
                         f"{failed[retry[0]]['error']}); rerun the same command to retry just those")
    with timer.span("api" if cfg.orm.backend in ("api", "trained") else "model"):
        if cfg.reflect.revalidate:
            revalidate(cfg, rejected_file, failed)
        kept, reasons = write_rows(cfg, rejected_file, failed)
    fused = fuse(cfg, d_sft_file)
    stats = {"sent": to_send, "kept": kept, "dropped": dict(reasons),
             "d_sft": fused - kept, "fused": fused, "format": cfg.reflect.format}
    atomic_write_json(stage_dir(cfg) / layout.STATS, stats)
    timer.save(stage_dir(cfg) / "timings.json")
    mark_done(stage_dir(cfg), {**stats, "consumed": inputs(cfg).record()})
    print(f"reflect: sent {stats['sent']} drafts, kept {stats['kept']}, dropped "
          f"{sum(reasons.values())} ({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'none'}); "
          f"reflection SFT {fused} rows -> {fused_path(cfg)}")
    return 0


def iter_drafts(cfg: MathSEConfig, rejected_file: Path) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Each incorrect path with its draft key, and why it is skipped (None: it goes to the teacher).

    Identical drafts of a question are reflected on once, and at most `reflect.max_drafts_per_question`
    per question. Deterministic, so every pass over the file makes the same choice.
    """
    seen: set[bytes] = set()  # digests of (question id, draft): 16 bytes a draft, not its text
    per_question: Counter[str] = Counter()
    cap = cfg.reflect.max_drafts_per_question
    for raw in iter_jsonl(rejected_file):
        row = JudgedPathRow.model_validate(raw).to_json()
        row["key"] = f"{row['id']}#r{row['round']}#s{row['sample']}"
        digest = hashlib.blake2b(f"{row['id']}\0{row['reasoning']}".encode(), digest_size=16).digest()
        if digest in seen:
            yield row, "duplicate draft"
        elif cap is not None and per_question[row["id"]] >= cap:
            yield row, "over reflect.max_drafts_per_question"
        else:
            seen.add(digest)
            per_question[row["id"]] += 1
            yield row, None


def drafts_to_send(cfg: MathSEConfig, rejected_file: Path) -> Iterator[dict[str, Any]]:
    return (row for row, skip in iter_drafts(cfg, rejected_file) if skip is None)


def teacher_journal(cfg: MathSEConfig) -> Journal:
    return Journal(stage_dir(cfg) / "teacher.jsonl")


def ask_teacher(cfg: MathSEConfig, rejected_file: Path, to_send: int) -> dict[str, dict[str, Any]]:
    """Ask the teacher to correct every draft without a journaled reply; replies are journaled as
    each arrives, so a kill loses none. Returns the failed calls (key -> error, retryable)."""
    teacher = cfg.teacher
    if teacher is None and to_send:
        raise ConfigError([f"config error: teacher: required: {to_send} drafts to reflect on"])
    failed: dict[str, dict[str, Any]] = {}  # not journaled: a rerun asks again
    with teacher_journal(cfg) as journal:
        pending = sum(1 for d in drafts_to_send(cfg, rejected_file) if d["key"] not in journal)
        if not pending or teacher is None:
            return failed
        # Built one at a time as the client's in-flight window has room; images encoded when sent.
        requests = (ChatRequest(key=d["key"], messages=[user_message(reflection_prompt(cfg, JudgedPathRow(**d)),
                                                                     d["images"])])
                    for d in drafts_to_send(cfg, rejected_file) if d["key"] not in journal)
        ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
        client = ChatClient(teacher, cfg.api_cache_dir, ledger=ledger, stage=STAGE)

        def journal_it(result: ChatResult) -> None:
            if result.ok:
                journal.append({"key": result.key, "text": result.text})
            else:
                failed[result.key] = {"error": result.error, "retryable": result.retryable}

        try:
            client.complete_many_sync(requests, on_result=journal_it, progress="reflect teacher",
                                      collect=False, total=pending)
        finally:
            ledger.save()
    return failed


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


def corrected_paths(
    cfg: MathSEConfig, rejected_file: Path, failed: dict[str, dict[str, Any]], replies: Journal
) -> Iterator[tuple[dict[str, Any], str | tuple[str, str]]]:
    """Each draft sent with the teacher's (reflection, corrected solution), or why there is none."""
    for d in drafts_to_send(cfg, rejected_file):
        reply = failed.get(d["key"]) or replies.get(d["key"]) or {"error": "no reply"}
        if "text" not in reply:
            yield d, f"teacher call failed: {reply['error']}"
        elif (parts := split_reply(reply["text"])) is None:
            yield d, "unparseable teacher reply: no corrected solution"
        else:
            yield d, parts


def revalidate(cfg: MathSEConfig, rejected_file: Path, failed: dict[str, dict[str, Any]]) -> None:
    """The ORM judges every corrected path not judged yet; verdicts go to the stage's journal."""
    with teacher_journal(cfg) as replies:
        parsed = (
            (d, parts) for d, parts in corrected_paths(cfg, rejected_file, failed, replies) if isinstance(parts, tuple)
        )
        items = (JudgeItem(d["key"], Problem(id=d["id"], question=d["question"], images=tuple(d["images"]),
                                             answer=d["answer"]), parts[1]) for d, parts in parsed)
        ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
        with orm_endpoint(cfg, layout.servers_dir(layout.stage_dir(cfg, STAGE))) as endpoint:
            judge = PathJudge(cfg, STAGE, ledger, endpoint=endpoint)
            try:
                with Journal(journal_path(cfg, STAGE)) as journal:
                    stats = judge.judge(items, journal, progress="reflect judge")
            finally:
                judge.close()
                ledger.save()
    print(stats.summary_line())
    if stats.failed:
        raise StageError(f"reflect: {stats.failed} ORM calls failed; rerun the same command to retry just those")


def write_rows(cfg: MathSEConfig, rejected_file: Path, failed: dict[str, dict[str, Any]]) -> tuple[int, Counter[str]]:
    """One pass over the drafts: kept reflection rows and the dropped ones (with why) to their files.

    Returns how many were kept and the dropped ones counted by reason.
    """
    kept = 0
    reasons: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        replies = stack.enter_context(teacher_journal(cfg))
        verdicts = stack.enter_context(Journal(journal_path(cfg, STAGE))) if cfg.reflect.revalidate else None
        kept_out = stack.enter_context(atomic_open(rows_path(cfg)))
        dropped_out = stack.enter_context(atomic_open(layout.reflection_dropped_path(cfg)))

        def drop(d: dict[str, Any], reason: str, **extra: Any) -> None:
            reasons[reason.split(":")[0]] += 1
            write_line(dropped_out, {"key": d["key"], "id": d["id"], "reason": reason, **extra})

        for d, parts in corrected_paths(cfg, rejected_file, failed, replies):
            if isinstance(parts, str):
                reply = replies.get(d["key"])
                drop(d, parts, **({"raw": reply["text"]} if parts.startswith("unparseable") and reply else {}))
                continue
            reflection, corrected = parts
            verdict = verdicts.get(d["key"]) if verdicts is not None else None
            if verdicts is not None and (verdict is None or verdict["final"]["correct"] is not True):
                if verdict is None:
                    reason = "ORM call failed"
                elif verdict["final"]["correct"] is None:  # unknown is not wrong: counted apart
                    reason = "unknown: the ORM's verdict on the corrected path could not be read"
                else:
                    analysis = (verdict["final"].get("analysis") or "").strip()[:200]
                    reason = f"ORM rejected the corrected path: {analysis}"
                drop(d, reason, corrected=corrected)
                continue
            kept += 1
            write_line(kept_out, ReflectionRow(
                instruction=d["prompt"], input="", draft=d["reasoning"], reflection=reflection, output=corrected,
                id=d["id"], key=d["key"], images=d["images"], answer=d["answer"], round=d["round"],
                error_step=d.get("error_step"), analysis=d.get("analysis"),
            ).to_json())
        for d, skip in iter_drafts(cfg, rejected_file):
            if skip is not None:
                drop(d, skip)
    return kept, reasons


def training_response(row: dict[str, Any], fmt: str) -> str:
    """The SFT target of a kept row: the corrected path, or the reflection + the corrected path.

    The draft is never part of a target: with format "reflection" it is an earlier turn of the
    sample (see `reflection_turns`), masked out of the loss in the final training.
    """
    if fmt == "corrected":
        return row["output"]
    return f"Reflection: {row['reflection']}\n\nCorrected solution:\n{row['output']}"


def diagnosis_turn(row: dict[str, Any], with_diagnosis: bool = True) -> str:
    """The user turn after the draft in a reflection sample: the ORM's diagnosis of it (without it,
    `reflect.feedback: teacher`: only that the solution is wrong, as the teacher was told)."""
    step = row.get("error_step") if with_diagnosis else None
    where = f"the first error is at step {step}" if step else "the solution contains an error"
    analysis = (row.get("analysis") or "").strip() if with_diagnosis else ""
    return (f"A reviewer checked your solution: {where}." + (f" {analysis}" if analysis else "")
            + "\nReflect on the mistake, then write a corrected step-by-step solution.")


def fuse(cfg: MathSEConfig, d_sft_file: Path) -> int:
    """D_SFT + the kept reflections -> reflection_sft.jsonl and its LLaMA-Factory dataset (streamed)."""
    multi_turn = cfg.reflect.format == "reflection"

    def fused_rows() -> Iterator[dict[str, Any]]:
        for r in map(SftRow.model_validate, iter_jsonl(d_sft_file)):
            yield {"instruction": r.prompt, "input": "", "output": r.response, "images": r.images, "id": r.id,
                   "origin": r.origin}
        # format reflection: LLaMA-Factory's alpaca convention, `history` holds the earlier turns
        # (question -> draft) and `instruction` the current one (the diagnosis).
        for r in iter_jsonl(rows_path(cfg)):
            yield {"instruction": diagnosis_turn(r, cfg.reflect.feedback == "orm") if multi_turn else r["instruction"],
                   "input": "",
                   "output": training_response(r, cfg.reflect.format), "images": r["images"], "id": r["id"],
                   "origin": "reflection", "draft": r["draft"], "reflection": r["reflection"],
                   **({"history": [[r["instruction"], r["draft"]]]} if multi_turn else {})}

    atomic_write_jsonl(fused_path(cfg), fused_rows())
    examples = (
        SftExample(prompt=r["instruction"], response=r["output"], images=tuple(r["images"]), id=r["id"],
                   history=tuple((u, a) for u, a in r.get("history", ())))
        for r in iter_jsonl(fused_path(cfg))
    )
    return write_sharegpt_dataset(examples, cfg.dataset_dir, DATASET_NAME, TokenBudget.for_training(cfg, "final"))
