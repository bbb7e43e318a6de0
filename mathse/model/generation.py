"""The served inference backend (`inference.backend: served`): generate through managed servers.

`ServedGenerator` has the in-process `Generator`'s interface (context manager, `generate(items,
journal)` -> GenStats, `close()`), so a stage picks either with `open_generator`. On the first
`generate` with work left it starts the model's servers (`servers.serve_model`: `serve.replicas`
replicas, local or placed by Ray) and keeps them until `close()`, which a stage calls before it
trains the next model. Requests go through the project's ChatClient (many in flight, retries with
backoff) over `replica_router.ReplicaRouter` (least-loaded replica, a failed replica's requests sent to
the others). The driver is the only writer: each path is appended to the same journal as the
in-process backend writes, the moment it arrives, so resume, dedup and markers work unchanged and a
rerun after a crash sends only the paths missing from the journal. There is no answer cache here:
the journal is the record (a cache would store every path twice).

Paths of one problem at temperature > 0 go out as one request with `n` (servers share the prompt's
KV cache); each request carries a `seed` derived from (run seed, first key), which vLLM and SGLang
honour per request, so sampled paths do not depend on order, batching or resuming there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult
from mathse.model.generation_items import (
    MAX_PATHS_PER_REQUEST,
    GenerationError,
    GenItem,
    GenStats,
    derive_seed,
    journal_row,
    plan_chunks,
)
from mathse.model.inference import Generator, chat_model_args
from mathse.model.inputs import ModelInputs
from mathse.model.prompts import student_prompt
from mathse.model.servers import (
    ServedModel,
    Servers,
    chat_template_path,
    serve_model,
    served_model,
    server_command,
)
from mathse.run.config import InferenceConfig, RayConfig, ServeConfig
from mathse.run.storage import Journal

__all__ = ["ServedGenerator", "describe", "open_generator", "served_name", "student_spec"]

log = logging.getLogger(__name__)


def served_name(model_path: str | Path, adapter_path: str | Path | None) -> str:
    """A name per checkpoint: the folder's name plus a digest of its full path (model + adapter)."""
    ref = f"{model_path}\x00{adapter_path or ''}"
    leaf = Path(str(adapter_path or model_path)).name or "model"
    return f"{leaf}-{hashlib.sha256(ref.encode()).hexdigest()[:8]}"


def student_spec(
    model_path: str | Path, adapter_path: str | Path | None, inputs: ModelInputs, inf: InferenceConfig,
    seed: int | None,
) -> ServedModel:
    """The student checkpoint as a ServedModel: its input settings from training, `inf`'s sampling."""
    adapter = None if adapter_path is None else str(adapter_path)
    return served_model(served_name(model_path, adapter_path), str(model_path), adapter, inputs, inf, seed)


def open_generator(
    model_path: str | Path,
    adapter_path: str | Path | None,
    inputs: ModelInputs,
    inf: InferenceConfig,
    *,
    serve: ServeConfig,
    ray: RayConfig | None,
    seed: int | None,
    server_dir: Path,
    **kwargs: Any,
) -> Generator | ServedGenerator:
    """The generator `inf.backend` asks for: in-process ChatModel, or managed servers (`serve`, `ray`)."""
    if inf.backend == "served":
        return ServedGenerator(student_spec(model_path, adapter_path, inputs, inf, seed), inf, serve, ray,
                               server_dir, seed=seed)
    # The in-process engine's own log lines go next to where a server's would.
    kwargs.setdefault("log_path", server_dir / "chat_model.log")
    return Generator(model_path, adapter_path, inputs, inf, seed=seed, **kwargs)


class ServedGenerator:
    """Answers `GenItem`s through servers it starts on first use and stops on `close()`."""

    def __init__(
        self,
        spec: ServedModel,
        inf: InferenceConfig,
        serve: ServeConfig,
        ray_cfg: RayConfig | None,
        server_dir: Path,
        *,
        seed: int | None = None,
        servers: Servers | None = None,
    ) -> None:
        """`servers`: already running replicas to use (not stopped by close); else they are started."""
        self.spec, self.inf, self.serve, self.ray_cfg = spec, inf, serve, ray_cfg
        self.server_dir = server_dir
        self.seed = seed
        self.servers = servers
        self._stack = contextlib.ExitStack()
        self._router: Any = None

    @property
    def loaded(self) -> bool:
        return self.servers is not None

    def _ensure_servers(self) -> float:
        if self.servers is not None:
            return 0.0
        start = time.perf_counter()
        self.servers = self._stack.enter_context(serve_model(self.serve, self.spec, self.server_dir, self.ray_cfg))
        return time.perf_counter() - start

    def close(self) -> None:
        """Stop the servers this generator started (frees their GPUs before training)."""
        self._router = None
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.servers = None

    def __enter__(self) -> ServedGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------

    def _plan(self, items: Sequence[GenItem], journal: Journal, temperature: float
              ) -> tuple[list[tuple[GenItem, ...]], int]:
        # Greedy paths are identical: one per request. Sampled: one request with n per problem.
        return plan_chunks(items, journal, 1 if temperature == 0 else MAX_PATHS_PER_REQUEST)

    def generate(
        self, items: Sequence[GenItem], journal: Journal, progress: str | None = None, *,
        temperature: float | None = None, **_: Any,
    ) -> GenStats:
        """Generate every item whose key is not yet in `journal`, appending each path on arrival.

        Same rows as `Generator.generate`; a request that failed on every replica and after every
        retry is not journaled (a rerun retries it); an unreadable image gives a row with "error".
        `temperature` overrides `inference.temperature` for this call.
        """
        stats = GenStats()
        temp = self.inf.temperature if temperature is None else temperature
        groups, stats.skipped_existing = self._plan(items, journal, temp)
        if not groups:
            return stats
        stats.load_seconds = self._ensure_servers()
        assert self.servers is not None
        in_flight = self.inf.concurrency * len(self.servers.base_urls)
        if self._router is None:
            self._router = self.servers.transport(in_flight)
        api = self.servers.api_config(in_flight, temperature=temp, top_p=self.inf.top_p,
                                      max_tokens=self.inf.max_new_tokens)
        client = ChatClient(api, cache_dir=None, transport=self._router, images=self.servers.images())
        bar = tqdm(total=sum(len(g) for g in groups), desc=progress, unit="path",
                   disable=True if progress is None else None)
        start = time.perf_counter()
        try:
            # Chunks bound the requests built ahead (images are encoded only when sent, by the client)
            # and give each chunk its all-failed check.
            for chunk in _chunks(groups, max(64, 8 * in_flight)):
                self._run_chunk(client, chunk, journal, stats, bar, temp)
        finally:
            stats.seconds = time.perf_counter() - start
            bar.close()
        log.info(stats.summary())
        return stats

    def _run_chunk(self, client: ChatClient, groups: list[tuple[GenItem, ...]], journal: Journal,
                   stats: GenStats, bar: tqdm, temperature: float) -> None:
        requests: list[ChatRequest] = []
        by_key: dict[str, tuple[GenItem, ...]] = {}
        for group in groups:
            problem = group[0].problem
            error = _image_problem(problem.images)  # the in-process backend's "error" rows, without decoding
            if error is not None:
                for item in group:
                    journal.append(journal_row(item, student_prompt(problem), None, None, 0.0) | {"error": error})
                stats.failed += len(group)
                bar.update(len(group))
                continue
            extra = None
            if temperature > 0 and self.seed is not None:
                extra = {"seed": derive_seed(self.seed, group[0].key) & 0x7FFFFFFF}
            requests.append(ChatRequest(key=group[0].key, messages=[client.user_message(student_prompt(problem),
                                                                                        problem.images)],
                                        n=len(group), extra=extra))
            by_key[group[0].key] = group
        if not requests:
            return

        def on_result(result: ChatResult) -> None:
            group = by_key[result.key]
            bar.update(len(group))
            if not result.ok or len(result.texts) < len(group):
                stats.failed += len(group)
                stats.retry_later += len(group)
                log.warning("generation failed for %s: %s", result.key, result.error or "too few choices")
                return
            prompt = student_prompt(group[0].problem)
            for item, text in zip(group, result.texts, strict=False):
                row = journal_row(item, prompt, text, result.finish_reason, round(result.latency_s, 4))
                row["prompt_tokens"] = result.prompt_tokens
                row["response_tokens"] = result.completion_tokens // len(group)
                journal.append(row)
                stats.done += 1

        results = client.complete_many_sync(requests, on_result=on_result)
        if all(not r.ok for r in results):
            raise GenerationError(
                f"all {len(results)} generation requests of a batch failed on every replica of {self.spec.name} "
                f"(last: {results[-1].error}); finished paths are in {journal.path}; server logs in {self.server_dir}"
            )


def _image_problem(paths: Sequence[str]) -> str | None:
    """Why an image cannot be sent (missing, remote, not an image), or None. The server decodes the
    pixels; here only the header and structure are checked (PIL verify), which costs no decoding."""
    from PIL import Image

    for ref in paths:
        if ref.startswith(("http://", "https://")):
            return f"image {ref}: remote images are not supported, download them first"
        try:
            with Image.open(ref) as img:
                img.verify()
        except FileNotFoundError:
            return f"image not found: {ref}"
        except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            return f"image unreadable: {ref}: {type(exc).__name__}: {exc}"
    return None


def _chunks(groups: list[tuple[GenItem, ...]], size: int) -> Iterator[list[tuple[GenItem, ...]]]:
    for i in range(0, len(groups), size):
        yield groups[i : i + size]


def describe(
    model_path: str | Path,
    adapter_path: str | Path | None,
    inputs: ModelInputs,
    inf: InferenceConfig,
    *,
    serve: ServeConfig,
    ray: RayConfig | None,
    server_dir: Path,
) -> str:
    """What generating with this checkpoint under `inf` runs, for --dry-run: the in-process
    ChatModel's arguments, or the servers (replicas, placement, replica 0's command). The one
    description every plan prints, so a plan names the engine the run uses."""
    if inf.backend != "served":
        args = chat_model_args(str(model_path), None if adapter_path is None else str(adapter_path), inputs, inf)
        return f"in-process {args['infer_backend']} engine, ChatModel({json.dumps(args)})"
    spec = student_spec(model_path, adapter_path, inputs, inf, None)
    tag = f"{spec.name}.replica-0"
    argv, env = server_command(serve, spec, serve.host, 0, server_dir / f"{tag}.yaml",
                               chat_template_path(serve, spec, server_dir, tag))
    where = f"Ray ({ray.address or 'local'})" if ray is not None else "this node"
    env_text = " ".join(f"{k}={v}" for k, v in env.items() if k != "PYTHONUNBUFFERED")
    return (f"{serve.replicas} {serve.engine} replica(s) on {where}, port chosen at start; replica 0:\n"
            f"$ {env_text + ' ' if env_text else ''}{' '.join(argv)}")
