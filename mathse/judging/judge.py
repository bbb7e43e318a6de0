"""The outcome reward model (ORM) as a judge of reasoning paths, for the evolve and reflect stages.

`PathJudge.judge(items, journal)` gives every reasoning path a verdict: correct or not, the first
faulty step (1-based into ``split_steps(path)``) and an analysis. Where the verdict comes from is
the config's business (``orm`` section):

* the rule check (the path's final answer against the reference, via math-verify) is cheap, so it
  is computed and recorded for every path, whatever the policy, so reports can measure how often
  the ORM and the rule disagree;
* the ORM verdict is asked only when ``orm.policy`` needs it (orm / both / either), from
  ``orm.backend``: ``api`` (any OpenAI-compatible server, e.g. the trained ORM behind
  ``llamafactory-cli api`` or vLLM; cached on disk, retried) or ``local`` (a LLaMA-Factory
  ``ChatModel`` loaded in-process, greedy decoding, created on first use);
* ``verdict.combine`` merges both under the policy and ``orm.score_threshold``.

Persistence
-----------
The caller owns the journal. Stages keep it at ``journal_path(cfg, stage)``, i.e.
``<output_dir>/orm_reflections/<stage>.jsonl``; each verdict is appended the moment it arrives::

    {"key", "id", "path", "steps": [...],
     "orm": {"raw", "correct", "error_step", "analysis", "score", "score_source", "parsed"} | null,
     "rule": {"correct", "extracted", "reason"} | null,
     "final": {"correct", "error_step", "analysis", "source"},
     "asks": <how many times this path was asked: > 1 after an unknown verdict was asked again>}

A key already in the journal is never judged again, so a killed or repeated run resumes for free.
An unparseable ORM reply is asked again once at once (the reply and a reminder of the format go
back to the ORM). One that still does not parse is journaled with its raw text and counted; the
ORM's vote is never "correct" (``combine`` may still accept the path under policy "either"). A
row whose final verdict stayed unknown (``final.correct`` null) is *asked again* by the next
``judge`` call over the same journal (the new row supersedes it): unknown is not wrong.

P(correct): with ``orm.logprobs`` the request asks for token log-probabilities; when the server
returns them, ``score_from_logprobs`` turns them into the verdict's ``score`` (``score_source``
"logprobs"), which ``orm.score_threshold`` acts on. A server without log-probabilities
(``llamafactory-cli api`` is one) leaves the score to what the ORM wrote itself ("score" in its
JSON, ``score_source`` "reply"), and with neither the threshold does not apply.

A *failed* ORM call (the API gave up after its retries, or the local model raised) is not a verdict:
it is NOT journaled, so the next run asks again. It is reported in ``JudgeStats.failed`` and
``JudgeStats.unjudged`` (the row with ``final.correct`` null and an ``error`` reason) and appended
to the side file ``<stage>.failed.jsonl`` next to the journal, for post-mortems.
"""

from __future__ import annotations

import base64
import gc
import io
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from mathse.answers.extraction import RuleCheck, check_path
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult, system_message
from mathse.judging.orm_endpoint import OrmEndpoint
from mathse.judging.orm_score import score_from_logprobs
from mathse.judging.steps import split_steps
from mathse.judging.verdict import (
    ORM_SYSTEM_PROMPT,
    Verdict,
    build_orm_prompt,
    combine,
    parse_verdict,
    rule_verdict,
)
from mathse.model.inference import chat_model_args
from mathse.model.inputs import model_inputs
from mathse.model.training_data import IMAGE_TOKEN
from mathse.run import layout
from mathse.run.config import InferenceConfig
from mathse.run.records import Problem, VerdictRow
from mathse.run.storage import Journal
from mathse.run.usage import UsageLedger

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig

__all__ = ["JudgeItem", "JudgeStats", "PathJudge", "failures_path", "journal_path", "local_orm_args", "open_journal"]

log = logging.getLogger(__name__)

TOP_LOGPROBS = 5  # alternatives per token: enough to see both "true" and "false" at the verdict
REASK_TEXT = (
    "Your reply could not be read as a verdict. Reply again with exactly one JSON object: "
    '{{"correct": true or false, "error_step": <step number from 1 to {n_steps}, or null>, "analysis": "<text>"}}'
)


def is_unknown(row: dict[str, Any]) -> bool:
    """A journaled verdict that decided nothing (final.correct null): asked again by the next run."""
    final = row.get("final") or {}
    return final.get("correct") is None


journal_path = layout.journal_path  # where a stage keeps its ORM verdicts


def local_orm_args(cfg: MathSEConfig) -> dict[str, Any]:
    """The `ChatModel` arguments of the in-process ORM (`orm.local`): greedy, since a judge must be
    deterministic, with the input settings of the ORM's training (template: `orm.local.template`,
    else `model.template`; images resized as its recipe did) and `inference.extra` (processor and
    engine arguments) as every other ChatModel gets them.
    """
    local = cfg.require("orm.local")
    greedy = InferenceConfig(backend="huggingface", temperature=0.0, max_new_tokens=local.max_new_tokens,
                             extra=cfg.inference.extra)
    inputs = model_inputs(cfg, "orm")
    if local.template is not None:
        inputs = replace(inputs, template=local.template)
    return chat_model_args(local.model_name_or_path, local.adapter_name_or_path or None, inputs, greedy)


def open_journal(cfg: MathSEConfig, stage: str) -> Journal:
    """The stage's verdict journal (created if missing, resumed if present)."""
    return Journal(journal_path(cfg, stage))


def failures_path(journal_file: Path) -> Path:
    """The side file listing failed (unjudged, to be retried) calls next to a journal."""
    return journal_file.with_name(f"{journal_file.stem}.failed.jsonl")


@dataclass(frozen=True)
class JudgeItem:
    """One reasoning path to judge; `key` is unique (it keys the journal), e.g. "<id>#<k>"."""

    key: str
    problem: Problem
    path: str


@dataclass(frozen=True)
class _Pending:
    """A path taken for judging: what its verdict row needs, made once when it is taken."""

    item: JudgeItem
    steps: list[str]
    check: RuleCheck | None
    asks: int  # times asked before (a verdict that stayed unknown is asked again)


@dataclass
class JudgeStats:
    """What one `PathJudge.judge` call did. correct / incorrect / undecided count final verdicts."""

    stage: str = ""
    judged: int = 0  # new verdicts journaled by this call
    correct: int = 0
    incorrect: int = 0
    undecided: int = 0  # final.correct null (e.g. unparseable ORM reply under policy "orm"): asked again next run
    unparseable: int = 0  # ORM replies that parse_verdict could not read, even after the re-ask
    reasked: int = 0  # unparseable first replies asked again at once
    failed: int = 0  # ORM calls that failed: not journaled, retried on the next run
    skipped_existing: int = 0  # already in the journal
    disagree: int = 0  # parsed ORM verdict and rule verdict differ
    unjudged: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> row with the failure

    def summary_line(self) -> str:
        prefix = f"{self.stage}: " if self.stage else ""
        return (
            f"{prefix}judged {self.judged:,} new paths: {self.correct:,} correct, {self.incorrect:,} incorrect, "
            f"{self.undecided:,} undecided (asked again on the next run); {self.unparseable:,} unparseable "
            f"ORM replies ({self.reasked:,} re-asked), "
            f"{self.disagree:,} ORM/rule disagreements; {self.failed:,} failed (retried on rerun); "
            f"{self.skipped_existing:,} already judged"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "unjudged"}


class PathJudge:
    """Judges reasoning paths per `cfg.orm` (backend, policy, threshold); see the module docstring."""

    def __init__(
        self, cfg: MathSEConfig, stage: str, ledger: UsageLedger | None = None, endpoint: OrmEndpoint | None = None
    ) -> None:
        """`endpoint`: the ORM to ask (backend api / trained); default `orm.api`. The pipeline
        passes the one `orm_endpoint.orm_endpoint` yields (servers it started, or orm.api)."""
        self.cfg = cfg
        self.endpoint = endpoint
        self.stage = stage
        self.ledger = ledger
        self.policy = cfg.orm.policy
        # Policy "rule" never asks the ORM, even when a backend is configured: it costs money/GPU.
        self.uses_orm = self.policy != "rule"
        self._chat_model: Any = None

    # -- public ---------------------------------------------------------------------------------

    def judge(
        self, items: Iterable[JudgeItem], journal: Journal, progress: str | None = None, total: int | None = None
    ) -> JudgeStats:
        """Judge every item not yet in `journal`, appending each verdict as it arrives.

        `items` is consumed lazily (no further ahead than the requests in flight) and only its key
        is kept per judged path, so a generator of 300K paths costs about the memory of one of 1K.
        `total`: the paths to judge, for the progress bar; counted here when `items` is a sequence.
        """
        stats = JudgeStats(stage=self.stage)
        pending = self._pending(items, journal, stats)
        first = next(pending, None)
        if first is None:  # nothing to judge: no client, no model loaded
            return stats
        pending = itertools.chain([first], pending)
        if total is None and isinstance(items, Sequence):
            total = sum(1 for _ in self._pending(items, journal, JudgeStats(), rule=False))
        if not self.uses_orm:
            for path in tqdm(pending, desc=progress, unit="path", total=total,
                             disable=True if progress is None else None):
                self._record(path, None, journal, stats)
        elif self.cfg.orm.backend in ("api", "trained"):
            self._judge_api(pending, journal, stats, progress, total)
        elif self.cfg.orm.backend == "local":
            self._judge_local(pending, journal, stats, progress, total)
        else:  # config validation forbids this; guard against a hand-built config
            raise ValueError(f"orm.policy {self.policy!r} needs orm.backend api or local")
        return stats

    def _pending(
        self, items: Iterable[JudgeItem], journal: Journal, stats: JudgeStats, rule: bool = True
    ) -> Iterator[_Pending]:
        """The items still to judge, each with its steps, rule check and earlier asks, made as it is
        taken. The rule check (math-verify, a few ms) is thus made on the client's event loop while
        the requests already sent stay in flight, and never for the whole batch at once."""
        seen: set[str] = set()  # keys only: a few dozen bytes a path
        for item in items:
            if item.key in seen:
                raise ValueError(f"duplicate judge item key in one batch: {item.key!r}")
            seen.add(item.key)
            earlier = journal.get(item.key)
            if earlier is not None and not is_unknown(earlier):
                stats.skipped_existing += 1
                continue
            asks = int(earlier.get("asks", 0)) if earlier is not None else 0
            yield _Pending(item, split_steps(item.path), self._rule(item) if rule else None, asks)

    def close(self) -> None:
        """Free the local ORM model (and its GPU memory) before the caller trains or generates."""
        if self._chat_model is None:
            return
        self._chat_model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def __enter__(self) -> PathJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompts --------------------------------------------------------------------------------

    @staticmethod
    def prompt(item: JudgeItem, steps: list[str]) -> str:
        """The ORM's user text (images travel separately): exactly what the ORM was trained on."""
        reference = item.problem.answer if item.problem.answer.strip() else None
        return build_orm_prompt(item.problem.question, steps, reference)

    # -- backends -------------------------------------------------------------------------------

    def _judge_api(
        self, pending: Iterator[_Pending], journal: Journal, stats: JudgeStats, progress: str | None,
        total: int | None,
    ) -> None:
        endpoint = self.endpoint or (OrmEndpoint(self.cfg.orm.api) if self.cfg.orm.api is not None else None)
        if endpoint is None:
            raise ValueError("the trained ORM is not served: pass the endpoint of orm_endpoint.orm_endpoint(cfg)")
        client = ChatClient(endpoint.api, self.cfg.api_cache_dir if endpoint.cache else None, ledger=self.ledger,
                            stage=self.stage, transport=endpoint.transport, images=endpoint.images)
        extra = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.cfg.orm.logprobs else None
        live: dict[str, _Pending] = {}  # taken by the client, not recorded yet: bounded by its window

        def request(path: _Pending, unparsed: str | None = None) -> ChatRequest:
            # Built when the client takes the request (images are ImageRefs, encoded when sent),
            # so a round of 100K paths never holds its messages all at once.
            live[path.item.key] = path
            user = client.user_message(self.prompt(path.item, path.steps), path.item.problem.images)
            messages = [system_message(ORM_SYSTEM_PROMPT), user]
            if unparsed is not None:  # the re-ask: the reply that did not parse, and the format again
                messages += [{"role": "assistant", "content": unparsed},
                             {"role": "user", "content": REASK_TEXT.format(n_steps=max(len(path.steps), 1))}]
            # A verdict asked again on a later run must not come back from the answer cache.
            salt = f"ask-{path.asks}" if path.asks else None
            return ChatRequest(key=path.item.key, messages=messages, extra=extra, cache_salt=salt)

        reask: dict[str, tuple[_Pending, str]] = {}

        def record(result: ChatResult, final_try: bool) -> None:
            # Called as each answer arrives, so a kill loses at most the calls still in flight
            # (and those are in the client's cache if they were answered).
            path = live.pop(result.key)
            if not (result.ok and result.text is not None):
                self._record(path, None, journal, stats, error=result.error or "no answer")
                return
            verdict = parse_verdict(result.text, len(path.steps))
            if not verdict.parsed and not final_try:
                reask[result.key] = (path, result.text)  # asked again once, right after this batch
                return
            self._record(path, _with_score(verdict, result), journal, stats, asks=path.asks + 1)

        client.complete_many_sync((request(path) for path in pending), on_result=lambda r: record(r, False),
                                  progress=progress, collect=False, total=total)
        if reask:
            stats.reasked += len(reask)
            again = (request(path, text) for path, text in reask.values())
            client.complete_many_sync(again, on_result=lambda r: record(r, True), progress=progress, collect=False,
                                      total=len(reask))

    def _judge_local(
        self, pending: Iterator[_Pending], journal: Journal, stats: JudgeStats, progress: str | None,
        total: int | None,
    ) -> None:
        model = self._local_model()
        # ChatModel.chat is thread-safe: each call is a coroutine on the model's own event loop,
        # where LLaMA-Factory's MAX_CONCURRENT semaphore bounds the work in flight (HF: 1 by
        # default, vLLM batches). More threads than that would only queue.
        workers = max(1, int(os.environ.get("MAX_CONCURRENT", "1")))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orm-local")
        bar = tqdm(total=total, desc=progress, unit="path", disable=True if progress is None else None)
        futures: dict[Future[str], _Pending] = {}  # submitted, not recorded: a few per worker

        def record(done: Iterable[Future[str]]) -> None:
            for future in done:
                path = futures.pop(future)
                try:
                    raw = future.result()
                except Exception as err:  # one bad item must not sink the batch: retried next run
                    self._record(path, None, journal, stats, error=f"local ORM failed: {err!r}"[:300])
                else:
                    self._record(path, parse_verdict(raw, len(path.steps)), journal, stats)
                bar.update(1)

        try:
            for path in pending:
                futures[pool.submit(self._ask_local, model, path.item, path.steps)] = path
                if len(futures) >= 2 * workers:
                    record(wait(futures, return_when=FIRST_COMPLETED).done)
            record(as_completed(list(futures)))
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def _ask_local(self, model: Any, item: JudgeItem, steps: list[str]) -> str:
        images = [_load_image(ref) for ref in item.problem.images]
        content = IMAGE_TOKEN * len(images) + self.prompt(item, steps)
        replies = model.chat([{"role": "user", "content": content}], system=ORM_SYSTEM_PROMPT, images=images or None)
        return replies[0].response_text if replies else ""

    def _local_model(self) -> Any:
        """The in-process ORM, loaded on first use (imports torch and LLaMA-Factory only then)."""
        if self._chat_model is None:
            from mathse.model.llamafactory_qwen_vl_positions import load_chat_model

            args = local_orm_args(self.cfg)
            log.info("loading local ORM from %s", args["model_name_or_path"])
            self._chat_model = load_chat_model(args)
        return self._chat_model

    # -- recording ------------------------------------------------------------------------------

    @staticmethod
    def _rule(item: JudgeItem) -> RuleCheck | None:
        if not item.problem.answer.strip():
            return None  # no reference answer: nothing to check against
        return check_path(item.path, item.problem.answer, item.problem.question)

    def _record(
        self,
        path: _Pending,
        orm: Verdict | None,
        journal: Journal,
        stats: JudgeStats,
        error: str | None = None,
        asks: int = 1,
    ) -> None:
        item, steps, check = path.item, path.steps, path.check
        rule = rule_verdict(check) if check is not None else None
        row: dict[str, Any] = {
            "key": item.key,
            "id": item.problem.id,
            "path": item.path,
            "steps": steps,
            "orm": _orm_dict(orm) if orm is not None else None,
            "rule": _rule_dict(check) if check is not None else None,
            "asks": asks,
        }
        if error is not None:
            # Unjudged: the policy needs the ORM and it did not answer. Not journaled, so the
            # next run asks again; kept in the stats and the side file with its reason.
            row["final"] = {"correct": None, "error_step": None, "analysis": "", "source": self.policy}
            row["error"] = error
            stats.failed += 1
            stats.unjudged[item.key] = VerdictRow(**row).to_json()
            failure = {"key": item.key, "id": item.problem.id, "stage": self.stage, "error": error}
            _append_line(failures_path(journal.path), {**failure, "time": round(time.time(), 3)})
            return
        final = combine(orm, rule, self.policy, self.cfg.orm.score_threshold)
        row["final"] = {
            "correct": final.correct,
            "error_step": final.error_step,
            "analysis": final.analysis,
            "source": final.source,
        }
        if item.key in journal:
            journal.replace(VerdictRow(**row).to_json())  # a verdict that was unknown, asked again
        else:
            journal.append(VerdictRow(**row).to_json())
        stats.judged += 1
        if final.correct is True:
            stats.correct += 1
        elif final.correct is False:
            stats.incorrect += 1
        else:
            stats.undecided += 1
        if orm is not None and not orm.parsed:
            stats.unparseable += 1
        if orm is not None and orm.parsed and rule is not None and orm.correct != rule.correct:
            stats.disagree += 1


def _orm_dict(verdict: Verdict) -> dict[str, Any]:
    return {
        "raw": verdict.raw,
        "correct": verdict.correct,
        "error_step": verdict.error_step,
        "analysis": verdict.analysis,
        "score": verdict.score,
        "score_source": verdict.source if verdict.source in ("logprobs", "reply") else None,
        "parsed": verdict.parsed,
    }


def _with_score(verdict: Verdict, result: ChatResult) -> Verdict:
    """The verdict with P(correct) from the reply's token log-probabilities when there are any.

    `source` records where the score came from ("logprobs" / "reply"), for the journal.
    """
    score = score_from_logprobs(result.logprobs)
    if score is not None:
        return verdict.model_copy(update={"score": score, "source": "logprobs"})
    return verdict.model_copy(update={"source": "reply"}) if verdict.score is not None else verdict


def _rule_dict(check: RuleCheck) -> dict[str, Any]:
    return {"correct": check.correct, "extracted": check.extracted, "reason": check.reason}


def _append_line(path: Path, row: dict[str, Any]) -> None:
    # Failures are rare and informational: a plain append (no dedupe) keeps every attempt.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _load_image(ref: str) -> Any:
    """A PIL image from a local path or a data: URL, fully read so no file handle stays open."""
    from PIL import Image

    if ref.startswith("data:"):
        _, _, payload = ref.partition(",")
        source: Any = io.BytesIO(base64.b64decode(payload))
    elif ref.startswith(("http://", "https://")):
        raise ValueError(f"the local ORM backend needs local images, got a URL: {ref[:80]}")
    else:
        source = ref
    with Image.open(source) as image:
        return image.convert("RGB")
