"""config.yaml -> `MathSEConfig`, once, at the edge.

Errors from the YAML, from ``--set`` overrides and from validation are collected and reported
together, one line each, naming the key (with a close-match suggestion for unknown keys). Relative
paths resolve against the config's folder (shipped recipes against the project); `${VAR}` and
`${VAR:-default}` read the environment; the official MathSE README's keys are accepted as aliases.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mathse.model.backbones import check_model
from mathse.run.config import TRAININGS, MathSEConfig
from mathse.run.errors import ConfigError

__all__ = ["PROJECT_ROOT", "load_config", "parse_overrides", "variant_config"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Config keys whose values are filesystem paths that must exist when set.
_INPUT_PATHS = (
    "data.seed_file",
    "data.pool_file",
    "data.image_root",
    "orm.train_file",
    "orm.heldout_file",
    "orm.data.file",
    "llama_factory.recipe",
    "llama_factory.deepspeed",
    *(f"trainings.{name}.{key}" for name in TRAININGS for key in ("recipe", "deepspeed")),
)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=c` strings -> a nested dict; values are parsed as YAML scalars (1e-5, true, [1,2])."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"config error: --set {item!r}: expected key=value, e.g. evolve.rounds=2"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"config error: --set {item!r}: {part} is set both as a value and a section"])
        node[parts[-1]] = value
    return tree


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | None = None) -> MathSEConfig:
    """Read, override, substitute `${ENV}` references, validate and resolve paths."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config error: config file not found: {path}"])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config error: {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # one line, whatever the parser says
        raise ConfigError([f"config error: {where}: invalid YAML ({problem})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"config error: {path}: top level must be a mapping of sections"])
    _deep_merge(raw, parse_overrides(overrides or []))

    errors: list[str] = []
    _apply_aliases(raw, errors)
    try:
        raw = _substitute_env(raw, "", errors)
    except RecursionError:  # a self-referencing YAML anchor (`a: &a [*a]`)
        raise ConfigError([f"config error: {path}: nested too deeply (a recursive YAML anchor?)"]) from None
    if errors:
        raise ConfigError(errors)
    try:
        cfg = MathSEConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_errors(exc, raw)) from None

    try:
        errors = _resolve_and_check_paths(cfg, path.resolve().parent)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the filesystem, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
        raise ConfigError([f"config error: {path}: unusable path in the config ({reason})"]) from None
    if errors:
        raise ConfigError(errors)
    for i, variant in enumerate(cfg.ablations):  # the variants' keys, checked now (paths when they run)
        try:
            variant_config(cfg, variant.resolved()[0], cfg.output_dir, f"ablations[{i}].overrides", check_paths=False)
        except ConfigError as exc:
            errors += exc.lines
    if errors:
        raise ConfigError(errors)
    return cfg


# Keys a variant may not override: where it writes and what it is are the ablations stage's to set.
_VARIANT_FIXED = ("run.output_dir", "run.redo", "ablations")


def variant_config(cfg: MathSEConfig, overrides: dict[str, Any], output_dir: Path, where: str,
                   check_paths: bool = True) -> MathSEConfig:
    """A variant of the run (`--stage ablations`): `cfg` with dotted `overrides` (the keys `--set`
    takes; values as YAML gives them), writing into `output_dir`, its stale units redone there.

    Errors name the variant (`where`) and the key, with "did you mean" for an unknown one.
    """
    raw = cfg.model_dump()  # python mode: secrets stay secrets, paths stay resolved
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _VARIANT_FIXED or key.split(".")[0] == "ablations":
            raise ConfigError([f"config error: {where}: {key}: set by the ablations stage, not by a variant"])
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"config error: {where}: {key}: {part} is set both as a value and a section"])
        node[leaf] = value
    _deep_merge(raw, tree)
    raw["run"] = {**raw["run"], "output_dir": output_dir, "redo": ["all"]}
    raw["ablations"] = []
    try:
        variant = MathSEConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([line.replace("config error: ", f"config error: {where}: ", 1)
                           for line in _format_validation_errors(exc, raw)]) from None
    variant.config_dir = cfg.config_dir
    if check_paths:
        errors = _resolve_and_check_paths(variant, cfg.config_dir)
        if errors:
            raise ConfigError([line.replace("config error: ", f"config error: {where}: ", 1) for line in errors])
    return variant


# Keys of the official MathSE README -> this project's keys (docs/config reference: "Aliases").
KEY_ALIASES: dict[str, str] = {
    "orm.endpoint": "orm.api.base_url",
    "orm.api_key": "orm.api.api_key",
    "gpt4o.api_key": "teacher.api_key",
}
# The model name sent to an ORM given only by `orm.endpoint` (servers that serve one model ignore it).
DEFAULT_ORM_API_MODEL = "mathse-orm"


def _apply_aliases(raw: dict[str, Any], errors: list[str]) -> None:
    """Move every alias key (KEY_ALIASES) to its project key; both given is an error."""
    for alias, target in KEY_ALIASES.items():
        section, _, key = alias.partition(".")
        holder = raw.get(section)
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder.pop(key)
        if not holder and section not in ("orm", "teacher"):
            raw.pop(section)  # a section that only held aliases (gpt4o) is gone
        node = raw
        *parents, leaf = target.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                errors.append(f"config error: {alias}: alias of {target}, but {part} is not a section")
                break
        else:
            if leaf in node:
                errors.append(f"config error: {alias}: alias of {target}, which is also set; keep one")
            else:
                node[leaf] = value
        if target.startswith("orm.api.") and isinstance(raw.get("orm"), dict):
            api = raw["orm"].get("api")
            if isinstance(api, dict):
                api.setdefault("model", DEFAULT_ORM_API_MODEL)


def _resolve_and_check_paths(cfg: MathSEConfig, config_dir: Path) -> list[str]:
    """Resolve the config's paths against its folder; one error line per input path that is missing."""
    _resolve_paths(cfg, config_dir)
    errors = [
        f"config error: {key}: path not found: {_printable(str(value))}"
        for key in _INPUT_PATHS
        if (value := _get_dotted(cfg, key)) is not None and not Path(value).exists()
    ]
    base = Path(cfg.model.base)
    if _looks_local(cfg.model.base) and not base.exists():
        errors.append(f"config error: model.base: path not found: {base}")
    models = [("model.template", cfg.model.base, cfg.model.template)]
    if cfg.orm.local is not None and cfg.orm.local.template is not None:
        models.append(("orm.local.template", cfg.orm.local.model_name_or_path, cfg.orm.local.template))
    for key, model, template in models:
        wrong, warnings = check_model(model, template, key)
        errors += wrong
        for line in warnings:
            print(line, file=sys.stderr)
    if cfg.reflect.final_recipe is not None and not cfg.reflect.final_recipe.exists():
        errors.append(f"config error: reflect.final_recipe: path not found: {cfg.reflect.final_recipe}")
    for i, bench in enumerate(cfg.eval.benchmarks):
        for key in ("path", "image_root"):
            value = getattr(bench, key)
            if value is not None and not value.exists():
                errors.append(f"config error: eval.benchmarks[{i}].{key}: path not found: {value}")
    if cfg.reflect.final_recipe is not None and cfg.trainings.final.recipe is not None:
        errors.append("config error: reflect.final_recipe: also set as trainings.final.recipe; keep one")
    recipes = {"llama_factory.recipe": cfg.llama_factory.recipe, "reflect.final_recipe": cfg.reflect.final_recipe}
    recipes |= {f"trainings.{name}.recipe": getattr(cfg.trainings, name).recipe for name in TRAININGS}
    for key, recipe in recipes.items():
        if recipe is not None and recipe.exists() and (problem := _recipe_problem(recipe)):
            errors.append(f"config error: {key}: {recipe}: {problem}")
    return errors


def _recipe_problem(path: Path) -> str | None:
    """Why a LLaMA-Factory recipe cannot be used (not a file, not UTF-8, not a YAML mapping), or None."""
    if not path.is_file():
        return "not a file"
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except yaml.YAMLError as exc:
        return f"invalid YAML ({' '.join(str(getattr(exc, 'problem', exc)).split())})"
    return None if recipe is None or isinstance(recipe, dict) else "must be a YAML mapping of LLaMA-Factory arguments"


def _deep_merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _substitute_env(node: Any, where: str, errors: list[str]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in strings; an unset VAR without default is an error."""
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{where}.{k}" if where else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{where}[{i}]", errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        errors.append(f"config error: {_printable(where)}: environment variable {name} is not set")
        return ""

    value = _ENV_REF.sub(replace, node)
    # An empty secret means "none": local OpenAI-compatible servers need no key.
    return None if value == "" and node != "" else value


def _format_validation_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = _printable(".".join(loc) or "<root>")
        if err["type"] == "extra_forbidden":
            parent = _section_fields(loc[:-1])
            hint = difflib.get_close_matches(loc[-1], parent, n=1, cutoff=0.6) if parent else []
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"config error: {key}: unknown key{suggestion}")
        elif err["type"] == "missing":
            lines.append(f"config error: {key}: required key is missing")
        else:
            got = err.get("input")
            text = repr(got)
            text = text if len(text) <= 200 else f"{text[:200]}... ({len(text):,} chars)"  # one readable line
            shown = "" if isinstance(got, dict) else f" (got {text})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"config error: {key}: {msg}{shown}")
    return lines


def _printable(text: str) -> str:
    """`text`, or its repr when it holds a newline or another control character (one error = one line)."""
    return text if text.isprintable() else repr(text)


def _section_fields(loc: list[str]) -> list[str]:
    """Field names valid at a location in the schema, for close-match suggestions."""
    model: type[BaseModel] | None = MathSEConfig
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is None:
        return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _looks_local(ref: str, base: Path | None = None) -> bool:
    """A filesystem path rather than a hub id: explicit path syntax, or it exists."""
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).exists():
        return True
    return base is not None and (base / ref).exists()


def _resolve(value: Path, base: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_shipped(value: Path, base: Path) -> Path:
    """Like _resolve, but falls back to the templates shipped in the project's configs/."""
    resolved = _resolve(value, base)
    shipped = _resolve(value, PROJECT_ROOT)
    return shipped if not resolved.exists() and shipped.exists() else resolved


def _resolve_paths(cfg: MathSEConfig, base: Path) -> None:
    """Relative paths in the config are relative to the config file's folder."""
    cfg.config_dir = base
    cfg.run.output_dir = _resolve(cfg.run.output_dir, base)
    for key in ("seed_file", "pool_file", "image_root"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, _resolve(value, base))
    cfg.llama_factory.recipe = _resolve_shipped(cfg.llama_factory.recipe, base)
    if cfg.llama_factory.deepspeed is not None:
        cfg.llama_factory.deepspeed = _resolve_shipped(cfg.llama_factory.deepspeed, base)
    for name in TRAININGS:
        training = getattr(cfg.trainings, name)
        for key in ("recipe", "deepspeed"):
            if getattr(training, key) is not None:
                setattr(training, key, _resolve_shipped(getattr(training, key), base))
    for key in ("train_file", "heldout_file"):
        if getattr(cfg.orm, key) is not None:
            setattr(cfg.orm, key, _resolve(getattr(cfg.orm, key), base))
    if cfg.orm.data.file is not None:
        cfg.orm.data.file = _resolve(cfg.orm.data.file, base)
    for api in (cfg.teacher, cfg.orm.api, cfg.eval.judge):
        if api is not None and api.batch.output_file is not None:
            api.batch.output_file = _resolve(api.batch.output_file, base)
    if cfg.serve.python is not None and ("/" in cfg.serve.python or cfg.serve.python.startswith("~")):
        cfg.serve.python = str(_resolve(Path(cfg.serve.python), base))  # a path, not a name on PATH
    if cfg.reflect.final_recipe is not None:
        cfg.reflect.final_recipe = _resolve_shipped(cfg.reflect.final_recipe, base)
    for bench in cfg.eval.benchmarks:
        bench.path = _resolve(bench.path, base)
        if bench.image_root is not None:
            bench.image_root = _resolve(bench.image_root, base)
    if _looks_local(cfg.model.base, base):
        cfg.model.base = str(_resolve(Path(cfg.model.base), base))
    if cfg.orm.local is not None and _looks_local(cfg.orm.local.model_name_or_path, base):
        cfg.orm.local.model_name_or_path = str(_resolve(Path(cfg.orm.local.model_name_or_path), base))


def _get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
