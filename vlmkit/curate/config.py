"""Pipeline files: a YAML list of stages in order, each with its parameters.

    description: DataComp basic filter, then CLIP score top 30%
    model: runs/clip                 # optional: any contrastive model; needed by the model stages
    shard_size: 1000                 # optional: samples per curated shard
    stages:
      - caption_length: {min_words: 3, min_chars: 6}
      - language: {languages: [en]}
      - image_size: {min_side: 200, max_aspect: 3}
      - clip_score: {top_fraction: 0.3}
      - exact_dedup                  # a stage without parameters may be a bare name

Built-in pipelines (``vlmkit/curate/pipelines/NAME.yaml``) are named without the path. ``overrides`` set any
parameter as ``STAGE.PARAM=VALUE`` (the value read as YAML) or a top-level key as ``KEY=VALUE``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from vlmkit.curate.balance import ClusterBalance, ImageBasedFilter
from vlmkit.curate.clip_score import ClipScore
from vlmkit.curate.dedup import Decontaminate, EmbeddingDedup, ExactDedup, PhashDedup
from vlmkit.curate.stages import Stage
from vlmkit.curate.stages_image import Decodable, ImageSize
from vlmkit.curate.stages_text import Boilerplate, CaptionLength, Language, RepeatedChars

STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in (
    Decodable, CaptionLength, RepeatedChars, Boilerplate, Language, ImageSize, ClipScore, ExactDedup, PhashDedup,
    EmbeddingDedup, Decontaminate, ClusterBalance, ImageBasedFilter)}
TOP_LEVEL = ("description", "model", "shard_size", "stages")
PATH_PARAMETERS = ("eval_set", "reference")  # relative paths are tried beside the pipeline file too


@dataclass
class Pipeline:
    """Stages in order (``decodable`` first, added when not listed), the model spec, the curated shard size."""

    stages: list[Stage]
    model: str | None = None
    shard_size: int = 1000
    description: str = ""
    source: str = ""

    @property
    def needs_model(self) -> bool:
        return any(stage.needs_model for stage in self.stages)

    @property
    def needs_language(self) -> bool:
        return any(stage.needs_language for stage in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {"description": self.description, "model": self.model, "shard_size": self.shard_size,
                "stages": [{stage.name: stage.params()} for stage in self.stages]}


def pipeline_names() -> list[str]:
    folder = resources.files("vlmkit.curate") / "pipelines"
    return sorted(item.name[:-5] for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_pipeline(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """A pipeline from a YAML file or a built-in name, with ``STAGE.PARAM=VALUE`` overrides applied."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no such pipeline file: {path}")
        text, base = path.read_text(), path.resolve().parent
    else:
        resource = resources.files("vlmkit.curate") / "pipelines" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ValueError(f"unknown pipeline {str(name_or_path)!r}; built-in pipelines: "
                             f"{', '.join(pipeline_names())} (or give a path to a YAML file)")
        text, base = resource.read_text(), None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"pipeline {name_or_path} is not valid YAML: {str(error).splitlines()[0]}") from None
    return pipeline_from_dict(data, overrides=overrides, base=base, source=str(name_or_path))


def pipeline_from_dict(data: Any, *, overrides: Sequence[str] = (), base: Path | None = None,
                       source: str = "pipeline") -> Pipeline:
    """Validate a pipeline mapping (see the module docstring) into a :class:`Pipeline`."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a YAML mapping with keys {', '.join(TOP_LEVEL)}")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(TOP_LEVEL)}")
    entries = [_entry(entry, source) for entry in data.get("stages") or []]
    if not entries:
        raise ValueError(f"{source}: list at least one stage under `stages:`; stages: {', '.join(STAGES)}")
    top = {key: data.get(key) for key in ("description", "model", "shard_size")}
    _apply_overrides(entries, top, overrides, source)
    names = [name for name, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{source}: stage(s) {', '.join(repeated)} listed twice; each stage may appear once")
    stages = [_build_stage(name, params, base, source) for name, params in entries]
    if stages[0].name != "decodable":
        if "decodable" in names:
            raise ValueError(f"{source}: decodable must be the first stage (nothing can be judged before decoding)")
        stages.insert(0, Decodable())
    shard_size = top["shard_size"] if top["shard_size"] is not None else 1000
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"{source}: shard_size must be a positive integer, not {shard_size!r}")
    model = None if top["model"] in (None, "") else str(top["model"])
    return Pipeline(stages, model, shard_size, " ".join(str(top["description"] or "").split()), source)


def _entry(entry: Any, source: str) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = {} if params is None else params
    else:
        raise ValueError(f"{source}: each stage is `- NAME` or `- NAME: {{PARAM: VALUE, ...}}`, not {entry!r}")
    if name not in STAGES:
        raise ValueError(f"{source}: unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if not isinstance(params, dict):
        raise ValueError(f"{source}: the parameters of stage {name} must be a mapping, not {params!r}")
    return name, dict(params)


def _apply_overrides(entries: list[tuple[str, dict[str, Any]]], top: dict[str, Any], overrides: Sequence[str],
                     source: str) -> None:
    for override in overrides:
        key, equals, raw = override.partition("=")
        if not equals or not key:
            raise ValueError(f"override {override!r} must look like STAGE.PARAM=VALUE or model=VALUE")
        value = yaml.safe_load(raw) if raw else None
        stage, dot, param = key.partition(".")
        if not dot:
            if key not in top:
                raise ValueError(f"override {override!r}: unknown key {key!r}; top-level keys: "
                                 f"{', '.join(top)} (or STAGE.PARAM)")
            top[key] = value
            continue
        matching = [params for name, params in entries if name == stage]
        if not matching:
            raise ValueError(f"override {override!r}: the pipeline has no stage {stage!r}; its stages: "
                             f"{', '.join(name for name, _ in entries)}")
        matching[0][param] = value


def _build_stage(name: str, params: dict[str, Any], base: Path | None, source: str) -> Stage:
    cls = STAGES[name]
    allowed = [item.name for item in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{source}: stage {name} has no parameter(s) {', '.join(map(str, unknown))}; allowed: "
                         f"{', '.join(allowed) or '(none)'}")
    for key in PATH_PARAMETERS:
        value = params.get(key)
        if isinstance(value, str) and base is not None and not Path(value).exists() and (base / value).exists():
            params[key] = str(base / value)
    stage = cls(**params)
    stage.validate()
    return stage


def stage_help() -> str:
    """One line per stage: its name, what it does and its parameters with their defaults."""
    lines = []
    for name, cls in STAGES.items():
        defaults = ", ".join(f"{item.name}={_default(item)}" for item in dataclasses.fields(cls))
        lines.append(f"  {name:16} {cls.summary}" + (f" ({defaults})" if defaults else ""))
    return "\n".join(lines)


def _default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return item.default
