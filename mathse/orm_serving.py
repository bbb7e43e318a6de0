"""Where the judging stages reach the ORM: `orm_endpoint(cfg, run_dir)`, one context manager.

* ``orm.backend: api`` (or ``trained`` with ``orm.api`` set): the user's server, as configured.
* ``orm.backend: trained`` without ``orm.api``: the pipeline serves the ORM that ``--stage orm``
  trained (``paths.orm_model``) itself, with ``llamafactory-cli api`` on a free loopback port,
  waits until it answers, yields its endpoint, and stops it when the block ends however it ends
  (success, exception, Ctrl-C; the child also dies with the pipeline's process). Its log is
  ``<run_dir>/api_<port>.log``. It serves with the template and image size of the ORM's training
  run (``model.template``, ``training_image_max_pixels``) and decodes greedily.
* ``rule`` / ``local`` backends, or a policy that never asks the ORM: yields None.

One function on purpose: the mechanism behind it (today `llamafactory_bridge.serve_api`) can be
replaced by a general managed-server layer without touching the stages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathse.config import ApiConfig, MathSEConfig
from mathse.errors import StageError
from mathse.inference import chat_model_args, training_image_max_pixels
from mathse.llamafactory_bridge import serve_api
from mathse.storage import is_done, read_json

__all__ = ["SERVED_MODEL_NAME", "model_ref", "orm_endpoint", "orm_serve_args", "rule_only_notice"]

SERVED_MODEL_NAME = "mathse-orm"


def rule_only_notice(cfg: MathSEConfig, stage: str) -> str | None:
    """The one line a judging stage prints when no ORM is used, else None."""
    if cfg.orm.backend == "rule" or cfg.orm.policy == "rule":
        return (
            f"{stage}: no ORM is used (orm.backend {cfg.orm.backend}, orm.policy {cfg.orm.policy}): paths are "
            "judged by their final answer against the reference (rejection sampling)"
        )
    return None


def model_ref(model_dir: Path) -> tuple[str, str | None]:
    """(model_name_or_path, adapter_name_or_path) for a trained dir: LoRA dirs are adapters."""
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        return str(read_json(adapter_config)["base_model_name_or_path"]), str(model_dir)
    return str(model_dir), None


def orm_serve_args(cfg: MathSEConfig) -> dict[str, Any]:
    """`llamafactory-cli api` arguments for the trained ORM: its training's template and image size."""
    model_path, adapter = model_ref(cfg.model_path("orm_model"))
    args = chat_model_args(
        model_path,
        adapter,
        cfg.model.template,
        cfg.inference,
        image_max_pixels=training_image_max_pixels(cfg),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    # A judge decodes greedily; sampling settings of the student do not apply.
    args.update({"do_sample": False, "max_new_tokens": cfg.orm.max_new_tokens})
    args.pop("temperature", None)
    args.pop("top_p", None)
    return args


@contextlib.contextmanager
def orm_endpoint(cfg: MathSEConfig, run_dir: Path, *, measuring: bool = False) -> Iterator[ApiConfig | None]:
    """The ORM's OpenAI endpoint for the block (see the module docstring); None when no ORM is asked.

    `measuring`: the ORM stage's metrics need the trained ORM whatever orm.policy says.
    """
    orm = cfg.orm
    if orm.backend in ("rule", "local") or (orm.policy == "rule" and not measuring):
        yield None
        return
    if orm.api is not None:
        yield orm.api
        return
    model_dir = cfg.model_path("orm_model")
    if not is_done(model_dir):
        raise StageError(f"the ORM is not trained yet ({model_dir}): run --stage orm first")
    args = orm_serve_args(cfg)
    print(f"orm: serving {model_dir} with llamafactory-cli api (log in {run_dir})", flush=True)
    with serve_api(args, run_dir, startup_timeout_s=orm.serve_timeout_s) as base_url:
        yield ApiConfig(
            base_url=base_url,
            model=SERVED_MODEL_NAME,
            concurrency=cfg.inference.concurrency,
            max_tokens=orm.max_new_tokens,
            timeout_s=max(120.0, orm.serve_timeout_s),
            max_retries=2,
        )
