"""Batch generation with the student VLM through LLaMA-Factory's `ChatModel`, streamed to a journal.

Work is a list of `GenItem`s, one per reasoning path (problem, sample index). `Generator.generate`
skips every key already in the `Journal`, sends the rest to `ChatModel.achat` with many requests
in flight, and appends each result the moment it arrives, so a kill loses at most the requests in
flight and a rerun does only what is missing.

What "concurrency" really does depends on the LLaMA-Factory engine (0.9.5):

* vllm: every `achat` is one request to vLLM's AsyncLLMEngine, whose scheduler batches all
  requests in flight (continuous batching); `inference.concurrency` is the number in flight, so
  it should be large (hundreds are fine; memory is managed by vLLM's paged KV cache).
* huggingface: `achat` runs one unbatched `model.generate` per request in a worker thread
  (`asyncio.to_thread`), behind an `asyncio.Semaphore(MAX_CONCURRENT)` read from the environment
  when the engine is built (default 1). We set MAX_CONCURRENT to `inference.concurrency` while
  building it, so several `generate` calls do run at once, but they are separate threads sharing
  one model under the GIL: no batching, one KV cache each, and on CPU usually no gain at all (see
  benchmarks/bench_generation.py). Threads also come from the loop's default executor, at most
  min(32, cpus + 4). The real batching lever on this backend is `paths_per_request`: the pending
  paths of one problem go out as one request with `num_return_sequences=k`, i.e. one batched
  `generate` of k sequences. That is the default when sampling (temperature > 0).
* sglang: LLaMA-Factory's SGLang engine sends no image data to the server and iterates its HTTP
  stream inside the event loop (so requests run one at a time); image problems are refused.

Reproducibility:

* temperature 0 (do_sample False) is greedy and deterministic on huggingface (same machine,
  same torch); on vLLM greedy outputs can still differ in the last bits with batch composition.
* sampling on huggingface with `seed` set and concurrency 1: before each request the process-wide
  torch RNG is seeded from (seed, first key of the request), so a path's text does not depend on
  order, on which other items run, or on resuming (as long as requests are grouped the same way;
  `paths_per_request=1` makes every path independent of grouping). With concurrency > 1 this is
  impossible: torch's RNG is global to the process, not per thread, and `transformers.set_seed`
  only reseeds that global state, so concurrent `generate` threads draw from one interleaved
  stream. LLaMA-Factory does not forward a per-request `seed` to `generate` either.
* sampling on vLLM: LLaMA-Factory builds `SamplingParams` without a per-request seed, so only an
  engine-wide seed is possible (`inference.extra: {vllm_config: {seed: N}}`), which does not make
  outputs reproducible under continuous batching.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from mathse.model.generation_items import (
    MAX_PATHS_PER_REQUEST,
    GenerationError,
    GenItem,
    GenStats,
    derive_seed,
    journal_row,
    plan_chunks,
    user_turn,
)
from mathse.model.inputs import ModelInputs
from mathse.model.library_logs import library_logs_to
from mathse.model.prompts import student_prompt
from mathse.run.config import ConfigError, InferenceConfig
from mathse.run.records import Problem
from mathse.run.storage import Journal

if TYPE_CHECKING:
    from PIL import Image


__all__ = [
    "MAX_PATHS_PER_REQUEST",
    "GenItem",
    "GenStats",
    "GenerationError",
    "Generator",
    "chat_model_args",
]

log = logging.getLogger(__name__)

# "served": the ChatModel runs inside `llamafactory-cli api` (serve.engine llamafactory); its engine
# is huggingface unless inference.extra sets infer_backend.
_BACKENDS = {"huggingface": "huggingface", "vllm": "vllm", "sglang": "sglang", "served": "huggingface"}


def chat_model_args(
    model_path: str, adapter_path: str | None, inputs: ModelInputs, inf: InferenceConfig
) -> dict[str, Any]:
    """The `llamafactory.chat.ChatModel` arguments for our inference config (`inf.extra` wins).

    `inputs` are the model's input settings from its training (template, image size): the same
    image must become the same number of vision tokens as in training.
    """
    do_sample = inf.temperature > 0
    args: dict[str, Any] = {
        "model_name_or_path": str(model_path),
        "infer_backend": _BACKENDS[inf.backend],
        **inputs.chat_model_args(),
        # LLaMA-Factory defaults to do_sample=True (temperature 0.95, top_p 0.7): say it explicitly.
        "do_sample": do_sample,
        "temperature": inf.temperature,
        "top_p": inf.top_p,
        "max_new_tokens": inf.max_new_tokens,
    }
    if adapter_path is not None:
        args["adapter_name_or_path"] = str(adapter_path)
        args["finetuning_type"] = "lora"
    else:
        args["finetuning_type"] = "full"
    if inf.backend == "vllm":
        args["vllm_gpu_util"] = inf.vllm_gpu_util
        args["vllm_maxlen"] = inf.vllm_maxlen
    elif inf.backend == "sglang":
        # The same two knobs under SGLang's names, so one config serves both servers.
        args["sglang_mem_fraction"] = inf.vllm_gpu_util
        args["sglang_maxlen"] = inf.vllm_maxlen
    args.update(inf.extra)
    return args


@dataclass(frozen=True)
class _Request:
    """One `achat` call: the pending paths of one problem (several when grouped)."""

    problem: Problem
    items: tuple[GenItem, ...]


def _load_images(paths: Sequence[str]) -> tuple[list[Image.Image], str | None]:
    """Open every image as RGB; on the first failure return ([], a one-line reason)."""
    from PIL import Image

    images: list[Image.Image] = []
    for ref in paths:
        if ref.startswith(("http://", "https://")):
            return [], f"image {ref}: remote images are not supported, download them first"
        try:
            with Image.open(ref) as img:
                images.append(img.convert("RGB"))  # convert() loads the pixels: corrupt files fail here
        except FileNotFoundError:
            return [], f"image not found: {ref}"
        except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            return [], f"image unreadable: {ref}: {type(exc).__name__}: {exc}"
    return images, None


class Generator:
    """Answers `GenItem`s with one lazily built `ChatModel`, journaling each path as it arrives.

    Use as a context manager, or call `close()` to free the engine (GPU memory) before training.
    """

    def __init__(
        self,
        model_path: str | Path,
        adapter_path: str | Path | None,
        inputs: ModelInputs,
        inf: InferenceConfig,
        *,
        seed: int | None = None,
        paths_per_request: int | None = None,
        max_consecutive_failures: int | None = None,
        chat_model_factory: Callable[[dict[str, Any]], Any] | None = None,
        log_path: Path | None = None,
    ) -> None:
        """`paths_per_request`: None = auto (huggingface and sampling: all pending paths of a problem,
        up to MAX_PATHS_PER_REQUEST; otherwise 1). `chat_model_factory` replaces ChatModel (tests).
        `log_path`: where LLaMA-Factory's and transformers' own log lines go while the engine is
        loaded (the stage's log), instead of the console.
        """
        self.inf = inf
        self.seed = seed
        self.paths_per_request = paths_per_request
        self.max_consecutive_failures = max_consecutive_failures
        self.args = chat_model_args(str(model_path), None if adapter_path is None else str(adapter_path), inputs, inf)
        self._factory = chat_model_factory
        self._chat_model: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop_thread: threading.Thread | None = None
        # Image decoding runs here, off the event loop (which for vLLM also drives the engine) and
        # off the default executor (which the huggingface engine uses for its generate threads).
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._warned_seed = False
        self.log_path = log_path
        self._logs = contextlib.ExitStack()

    @property
    def loaded(self) -> bool:
        return self._chat_model is not None

    # ------------------------------------------------------------------------------------------
    # Engine lifecycle

    def _ensure_model(self) -> float:
        """Build the ChatModel if needed; returns the seconds it took."""
        if self._chat_model is not None:
            return 0.0
        start = time.perf_counter()
        if self.log_path is not None and self._factory is None:
            self._logs.enter_context(library_logs_to(self.log_path))
        try:
            self._chat_model = self._build_chat_model()
        except BaseException:
            self._logs.close()
            raise
        # All requests must run on ONE long-lived loop: the engine binds to it (the huggingface
        # engine's asyncio.Semaphore, vLLM's output handler task). ChatModel owns such a loop in a
        # daemon thread (its sync `chat()` uses it); a stand-in without one gets our own.
        loop = getattr(self._chat_model, "_loop", None)
        if loop is None:
            loop = asyncio.new_event_loop()
            self._own_loop_thread = threading.Thread(target=loop.run_forever, name="mathse-gen-loop", daemon=True)
            self._own_loop_thread.start()
        self._loop = loop
        self._io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="mathse-img")
        return time.perf_counter() - start

    def _build_chat_model(self) -> Any:
        if self._factory is not None:
            return self._factory(dict(self.args))
        from mathse.model.llamafactory_qwen_vl_positions import load_chat_model

        # The huggingface engine sizes its request semaphore from MAX_CONCURRENT in __init__;
        # set it for that moment only, so it does not leak into other engines of this process.
        previous = os.environ.get("MAX_CONCURRENT")
        os.environ["MAX_CONCURRENT"] = str(self.inf.concurrency)
        try:
            return load_chat_model(self.args)
        finally:
            if previous is None:
                os.environ.pop("MAX_CONCURRENT", None)
            else:
                os.environ["MAX_CONCURRENT"] = previous

    def close(self) -> None:
        """Free the engine: stop vLLM's engine process, drop the model, empty the device cache."""
        if self._chat_model is None:
            return
        engine = getattr(self._chat_model, "engine", None)
        shutdown = getattr(getattr(engine, "model", None), "shutdown", None)
        if callable(shutdown):  # vLLM V1 AsyncLLM: stops the engine-core process holding the GPU
            with contextlib.suppress(Exception):
                shutdown()
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=False, cancel_futures=True)
            self._io_pool = None
        # Stop the loop the requests ran on (ChatModel's daemon thread has no stop API of its own),
        # so a pipeline that builds a Generator per round does not pile up idle threads.
        loop, self._loop = self._loop, None
        thread = self._own_loop_thread or getattr(self._chat_model, "_thread", None)
        self._own_loop_thread = None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            if isinstance(thread, threading.Thread):
                thread.join(timeout=10)
            if not loop.is_running():
                loop.close()
        # Dropping the last reference also lets the SGLang engine's __del__ stop its server process.
        if engine is not None:
            with contextlib.suppress(AttributeError):
                del engine.model
        self._chat_model = None
        del engine
        if self._factory is None:  # a real engine: return its memory to the device now
            from llamafactory.extras.misc import torch_gc

            torch_gc()  # gc.collect() + empty the CUDA/NPU/XPU/MPS cache
        self._logs.close()  # library logs back to the console

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    # Generation

    def _group_size(self, override: int | None, temperature: float) -> int:
        wanted = override if override is not None else self.paths_per_request
        if self.inf.backend == "sglang" or temperature == 0:
            # SGLang's engine refuses n > 1; and at temperature 0 LLaMA-Factory's huggingface engine
            # turns num_return_sequences > 1 into sampling at temperature 1.0 (greedy paths are
            # identical anyway, so nothing is lost by sending them one by one).
            return 1
        if wanted is None:
            return MAX_PATHS_PER_REQUEST if self.inf.backend == "huggingface" else 1
        if wanted < 1:
            raise ValueError(f"paths_per_request must be >= 1, got {wanted}")
        return wanted

    def _plan(self, items: Sequence[GenItem], journal: Journal, group: int) -> tuple[list[_Request], int]:
        """Pending requests (paths of one problem together, in first-seen order) and the skip count."""
        chunks, skipped = plan_chunks(items, journal, group)
        return [_Request(chunk[0].problem, chunk) for chunk in chunks], skipped

    def generate(
        self,
        items: Sequence[GenItem],
        journal: Journal,
        progress: str | None = None,
        *,
        concurrency: int | None = None,
        paths_per_request: int | None = None,
        temperature: float | None = None,
    ) -> GenStats:
        """Generate every item whose key is not yet in `journal`, appending each result on arrival.

        Rows: {key, id, sample, response, prompt, images, finish_reason, gen_s, prompt_tokens,
        response_tokens}; `prompt` is the student prompt without image tags (SftExample semantics),
        `gen_s` the latency of the request that produced the path. An unreadable image gives a row
        with "error" (response None) and is not retried; a failed request is not journaled, so a
        rerun retries it. `concurrency` (default `inference.concurrency`; on huggingface at most
        that) bounds the requests in flight. `progress` names a tqdm bar; None shows none. `temperature`
        overrides `inference.temperature` for this call (e.g. eval's greedy pass and its samples, one engine).
        """
        stats = GenStats()
        temp = self.inf.temperature if temperature is None else temperature
        sampling = {} if temperature is None else {"temperature": temp, "do_sample": temp > 0}
        requests, stats.skipped_existing = self._plan(items, journal, self._group_size(paths_per_request, temp))
        if not requests:
            log.info(stats.summary())
            return stats
        if self.inf.backend == "sglang" and any(r.problem.images for r in requests):
            raise ConfigError(
                [
                    "config error: inference.backend: 'sglang' cannot be used for image problems "
                    "(LLaMA-Factory 0.9.5's SGLang engine does not send images); use vllm or huggingface"
                ]
            )
        stats.load_seconds = self._ensure_model()
        assert self._loop is not None
        in_flight = max(1, concurrency if concurrency is not None else self.inf.concurrency)
        seeded = self._seeding(in_flight, temp)
        limit = self.max_consecutive_failures or max(16, 2 * in_flight)
        total = sum(len(r.items) for r in requests)

        bar = tqdm(total=total, desc=progress, unit="path", disable=True if progress is None else None)
        finished = threading.Event()
        start = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(
            self._run(requests, journal, stats, bar, in_flight, seeded, limit, finished, sampling), self._loop
        )
        try:
            future.result()
        except BaseException:
            # Ctrl-C or an error: stop the workers and wait until none can touch the journal any more
            # (the caller closes it next). Requests already inside a huggingface thread run to the end.
            future.cancel()
            finished.wait(timeout=60)
            raise
        finally:
            stats.seconds = time.perf_counter() - start
            bar.close()
        log.info(stats.summary())
        return stats

    def _seeding(self, in_flight: int, temperature: float) -> bool:
        """Whether to seed torch per request (huggingface, sampling, seed set, one request at a time)."""
        if self.seed is None or temperature == 0 or self.inf.backend != "huggingface":
            return False
        if in_flight == 1:
            return True
        if not self._warned_seed:
            self._warned_seed = True
            log.info(
                "sampled paths are not reproducible with concurrency %d on huggingface: torch's RNG is "
                "process-wide, shared by the concurrent generate threads (use concurrency 1 for that)",
                in_flight,
            )
        return False

    async def _run(
        self,
        requests: list[_Request],
        journal: Journal,
        stats: GenStats,
        bar: tqdm,
        in_flight: int,
        seeded: bool,
        limit: int,
        finished: threading.Event,
        sampling: dict[str, Any],
    ) -> None:
        # A fixed pool of workers pulling from one iterator keeps memory flat for 100k items (no task
        # per item) and bounds the requests (and decoded images) in flight.
        queue: Iterator[_Request] = iter(requests)
        failures = {"in_a_row": 0}

        async def worker() -> None:
            for request in queue:  # next() never awaits, so workers never take the same request
                await self._serve(request, journal, stats, bar, seeded, failures, limit, sampling)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(in_flight, len(requests)))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            finished.set()

    async def _serve(
        self,
        request: _Request,
        journal: Journal,
        stats: GenStats,
        bar: tqdm,
        seeded: bool,
        failures: dict[str, int],
        limit: int,
        sampling: dict[str, Any],
    ) -> None:
        problem, items = request.problem, request.items
        loop = asyncio.get_running_loop()
        images, error = await loop.run_in_executor(self._io_pool, _load_images, problem.images)
        prompt = student_prompt(problem)
        if error is not None:
            for item in items:
                journal.append(journal_row(item, prompt, None, None, 0.0) | {"error": error})
            stats.failed += len(items)
            bar.update(len(items))
            return

        kwargs: dict[str, Any] = dict(sampling)
        if len(items) > 1:
            kwargs["num_return_sequences"] = len(items)
        messages = [{"role": "user", "content": user_turn(problem)}]
        if seeded:
            import torch

            # Only one request is in flight, so nothing else draws from the global RNG before this
            # request's generate() runs in its worker thread.
            torch.manual_seed(derive_seed(self.seed or 0, items[0].key))
        t0 = time.perf_counter()
        try:
            responses = await self._chat_model.achat(messages, images=images or None, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.failed += len(items)
            stats.retry_later += len(items)
            bar.update(len(items))
            failures["in_a_row"] += 1
            log.warning("generation failed for %s: %s: %s", items[0].key, type(exc).__name__, exc)
            if failures["in_a_row"] >= limit:
                raise GenerationError(
                    f"{failures['in_a_row']} generation requests failed in a row, stopping "
                    f"(last: {type(exc).__name__}: {exc}); finished paths are in {journal.path}"
                ) from exc
            return
        failures["in_a_row"] = 0
        gen_s = round(time.perf_counter() - t0, 4)
        for i, item in enumerate(items):
            if i >= len(responses):  # an engine returned fewer sequences than asked: retry them later
                stats.failed += 1
                stats.retry_later += 1
                continue
            resp = responses[i]
            row = journal_row(item, prompt, resp.response_text, resp.finish_reason, gen_s)
            row["prompt_tokens"], row["response_tokens"] = resp.prompt_length, resp.response_length
            journal.append(row)
            stats.done += 1
        bar.update(len(items))
