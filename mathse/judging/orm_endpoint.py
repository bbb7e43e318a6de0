"""Where the judging stages reach the ORM: `orm_endpoint(cfg, server_dir)`, one context manager.

* ``orm.backend: api`` (or ``trained`` with ``orm.api`` set): the user's server, as configured.
* ``orm.backend: trained`` without ``orm.api``: the pipeline serves the ORM that ``--stage orm``
  trained (``paths.orm_model``) itself, with the same mechanism as the served student
  (`mathse.model.servers.serve_model`: ``serve.engine`` vLLM / LLaMA-Factory / SGLang / a command,
  ``serve.replicas`` replicas, on Ray when ``ray`` is set). It waits until every replica answers,
  yields the endpoint, and stops the servers when the block ends however it ends (success,
  exception, Ctrl-C, SIGTERM). Logs go to ``server_dir``. It serves with the template and image
  size of the ORM's training run (``model.template``, ``model_inputs(cfg, "orm")``) and decodes
  greedily.
* ``rule`` / ``local`` backends, or a policy that never asks the ORM: yields None.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathse.api.messages import ImagePrep
from mathse.model.inputs import model_inputs
from mathse.model.servers import ServedModel, serve_model, served_model
from mathse.run import layout
from mathse.run.config import ApiConfig, MathSEConfig
from mathse.run.errors import StageError
from mathse.run.storage import is_done

__all__ = [
    "SERVED_MODEL_NAME",
    "OrmEndpoint",
    "describe_orm_serving",
    "orm_endpoint",
    "orm_serve_spec",
    "rule_only_notice",
]

SERVED_MODEL_NAME = "mathse-orm"


@dataclasses.dataclass(frozen=True)
class OrmEndpoint:
    """How the judge reaches the ORM."""

    api: ApiConfig
    transport: Any | None = None  # spreads requests over the replicas of a pipeline-served ORM
    # A user's server is cached like any paid API. A pipeline-served ORM is not: a retrained ORM
    # has the same name and path, and the verdict journal is the record anyway.
    cache: bool = True
    images: ImagePrep | None = None  # a pipeline-served ORM: images resized as in its training


def rule_only_notice(cfg: MathSEConfig, stage: str) -> str | None:
    """The one line a judging stage prints when no ORM is used, else None."""
    if cfg.orm.backend == "rule" or cfg.orm.policy == "rule":
        return (
            f"{stage}: no ORM is used (orm.backend {cfg.orm.backend}, orm.policy {cfg.orm.policy}): paths are "
            "judged by their final answer against the reference (rejection sampling)"
        )
    return None


def orm_serve_spec(cfg: MathSEConfig) -> ServedModel:
    """The trained ORM as a ServedModel: its training's input settings, greedy decoding."""
    model_path, adapter = layout.model_ref(cfg.model_path("orm_model"))
    # A judge decodes greedily; sampling settings of the student do not apply.
    greedy = cfg.inference.model_copy(update={"temperature": 0.0, "max_new_tokens": cfg.orm.max_new_tokens})
    spec = served_model(SERVED_MODEL_NAME, model_path, adapter, model_inputs(cfg, "orm"), greedy, cfg.run.seed)
    spec.llamafactory_args.update({"do_sample": False, "max_new_tokens": cfg.orm.max_new_tokens})
    spec.llamafactory_args.pop("temperature", None)
    spec.llamafactory_args.pop("top_p", None)
    return spec


def describe_orm_serving(cfg: MathSEConfig, server_dir: Path) -> str:
    """One line for --dry-run: what serves the trained ORM, where its logs go."""
    spec = orm_serve_spec(cfg)
    where = f"Ray ({cfg.ray.address or 'local'})" if cfg.ray is not None else "this node"
    return (
        f"{cfg.serve.replicas} {cfg.serve.engine} server(s) of {spec.adapter or spec.model} as {spec.name!r} "
        f"on {where}, greedy, max_new_tokens {cfg.orm.max_new_tokens}, "
        f"image_max_pixels {spec.inputs.image_max_pixels}; "
        f"logs in {server_dir}"
    )


@contextlib.contextmanager
def orm_endpoint(cfg: MathSEConfig, server_dir: Path, *, measuring: bool = False) -> Iterator[OrmEndpoint | None]:
    """The ORM's endpoint for the block (see the module docstring); None when no ORM is asked.

    `measuring`: the ORM stage's metrics need the trained ORM whatever orm.policy says.
    """
    orm = cfg.orm
    if orm.backend in ("rule", "local") or (orm.policy == "rule" and not measuring):
        yield None
        return
    if orm.api is not None:
        yield OrmEndpoint(orm.api)
        return
    model_dir = cfg.model_path("orm_model")
    if not is_done(model_dir):
        raise StageError(f"the ORM is not trained yet ({model_dir}): run --stage orm first")
    serve = cfg.serve.model_copy(update={"startup_timeout_s": orm.serve_timeout_s})
    with serve_model(serve, orm_serve_spec(cfg), server_dir, cfg.ray) as servers:
        concurrency = cfg.inference.concurrency * len(servers.base_urls)
        api = servers.api_config(concurrency, max_tokens=orm.max_new_tokens, temperature=0.0)
        yield OrmEndpoint(api, transport=servers.transport(cfg.inference.concurrency), cache=False,
                          images=servers.images())
