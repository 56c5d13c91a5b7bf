"""Pipeline files: a DAG of job stages whose inputs may name earlier stages' outputs.

A pipeline is YAML (or JSON) with `version`, `name`, `budget` (the AGORA cap for the whole run), optional
`defaults` (market settings every stage inherits) and `stages`, a mapping of stage name to stage. A stage is a
job spec, inline (`spec: {...}`) or a file (`spec: path.yaml`, relative to the pipeline file), deep-merged with
`override` (mappings merge key by key, anything else replaces, `null` deletes), plus its own market settings.

Anywhere a spec takes a blob id (`model.weights`, `data.inputs`, `data.labels`, `training.order`) it may instead
hold a reference `${stage.output}`: the blob the named stage's settled outputs produced. References are the
edges of the DAG. Nothing here touches a chain, a network or torch; `marketplace.pipeline.validate` checks
blobs, shapes and budgets, `marketplace.pipeline.runner` runs it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketplace.errors import PipelineError, SpecError
from marketplace.models import canonical_json
from marketplace.spec import JobSpec, parse_spec, read_document
from marketplace.types import to_wei

PIPELINE_VERSION = 1
#: `${stage.output}`: the whole string, nothing around it.
REF_RE = re.compile(r"^\$\{([A-Za-z][A-Za-z0-9_-]*)\.([A-Za-z][A-Za-z0-9_]*)\}$")
STAGE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: Spec fields that hold a blob id, so may hold a reference instead.
BLOB_SLOTS: tuple[tuple[str, ...], ...] = (("model", "weights"), ("data", "inputs"), ("data", "labels"),
                                           ("training", "order"))


# ---------------------------------------------------------------------------------------------- file schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _tokens(v: Any) -> str:
    """Token amounts are written as numbers or strings ("1.5"); kept as the decimal string."""
    from decimal import Decimal, InvalidOperation

    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError("must be an amount of tokens")
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"not an amount of tokens: {v!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"must be a non-negative amount of tokens, got {v!r}")
    to_wei(str(v))  # ValueError for more decimals than the token has: never rounded into another amount
    return str(v)


class MarketSettings(_Strict):
    """How a stage is bought; each unset field falls back to the pipeline's `defaults`, then to these."""

    replicas: int | None = Field(default=None, ge=1, le=16)
    max_price: str | None = None
    min_collateral: str | None = None
    bid_window: float | None = Field(default=None, gt=0, le=600)
    grace: float | None = Field(default=None, ge=0, le=60)
    run_seconds: int | None = Field(default=None, ge=1)
    window: int | None = Field(default=None, ge=1)

    @field_validator("max_price", "min_collateral", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> Any:
        return None if v is None else _tokens(v)


MARKET_DEFAULTS = {"replicas": 1, "max_price": "1", "min_collateral": "0", "bid_window": 2.0, "grace": 0.05,
                   "run_seconds": None, "window": None}


class StageFile(MarketSettings):
    spec: str | dict[str, Any]
    override: dict[str, Any] = Field(default_factory=dict)


class PipelineFile(_Strict):
    version: int = PIPELINE_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    budget: str
    defaults: MarketSettings = Field(default_factory=MarketSettings)
    stages: dict[str, StageFile] = Field(min_length=1)

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> str:
        return _tokens(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != PIPELINE_VERSION:
            raise ValueError(f"pipeline version {v} is not supported (expected {PIPELINE_VERSION})")
        return v


# ---------------------------------------------------------------------------------------------- parsed form
@dataclass(frozen=True)
class Ref:
    """`${stage.output}` found at `path` (e.g. ("model", "weights")) of a stage's spec."""

    stage: str
    output: str
    path: tuple[str, ...]

    @property
    def text(self) -> str:
        return "${" + f"{self.stage}.{self.output}" + "}"

    @property
    def where(self) -> str:
        return ".".join(self.path)


@dataclass
class Stage:
    """One stage: its raw spec (references still in it), the references, and resolved market settings."""

    name: str
    raw: dict[str, Any]
    refs: list[Ref]
    replicas: int
    max_price: int  # wei, per provider
    min_collateral: int
    bid_window: float
    grace: float
    run_seconds: int | None
    window: int | None
    source: str  # where the spec came from (file path or "inline")
    problems: list[str] = field(default_factory=list)  # found while parsing; reported by validate
    spec: JobSpec | None = None  # the spec with placeholders for references (None when invalid)

    @property
    def deps(self) -> list[str]:
        return sorted({r.stage for r in self.refs})

    @property
    def reserve(self) -> int:
        """The most this stage can cost: max price x replicas."""
        return self.max_price * self.replicas

    def stage_hash(self) -> str:
        """Identity of the stage's computation: keccak of its canonical spec with references left symbolic,
        plus k. A finished stage whose hash changed is not the stage that was paid for."""
        body = {"spec": json.loads(self.spec.canonical_json()) if self.spec else self.raw, "replicas": self.replicas}
        return "0x" + keccak(canonical_json(body)).hex()

    def resolve(self, outputs: dict[str, dict[str, str]]) -> JobSpec:
        """The job spec with every reference replaced by the blob id in `outputs[stage][output]`.
        Raises SpecError when an output is unknown or the result is not a valid spec."""
        data = copy.deepcopy(self.raw)
        for ref in self.refs:
            blob = outputs.get(ref.stage, {}).get(ref.output)
            if blob is None:
                raise SpecError(f"stage {self.name}: {ref.text} is not available yet")
            _set(data, ref.path, blob)
        return parse_spec(data, source=f"stage {self.name}")


@dataclass
class Pipeline:
    name: str
    budget: int  # wei
    stages: dict[str, Stage]
    path: Path | None
    description: str = ""
    problems: list[str] = field(default_factory=list)  # parse-level problems (bad stage names, ...)

    def order(self) -> list[str]:
        """Stages in a topological order (ties by file order). Raises PipelineError naming a cycle."""
        cycle = find_cycle(self.graph())
        if cycle:
            raise PipelineError(cycle_message(cycle))
        done: list[str] = []
        left = list(self.stages)
        while left:
            for name in left:
                if all(d in done or d not in self.stages for d in self.stages[name].deps):
                    done.append(name)
                    left.remove(name)
                    break
        return done

    def graph(self) -> dict[str, list[str]]:
        """stage -> the known stages it depends on."""
        return {n: [d for d in s.deps if d in self.stages] for n, s in self.stages.items()}

    def file_hash(self) -> str:
        return "0x" + keccak(canonical_json({n: s.stage_hash() for n, s in self.stages.items()})).hex()


def placeholder(ref_text: str) -> str:
    """A well-formed blob id standing in for a reference while the spec is checked (never a real blob)."""
    return "sha256:" + hashlib.sha256(b"agora-pipeline-ref:" + ref_text.encode()).hexdigest()


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Depth-first, in the graph's order, so the answer is stable."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state and (found := visit(n)):
            return found
    return None


def cycle_message(cycle: list[str]) -> str:
    """Dependencies point backwards; the message follows the data: a feeds b feeds ... feeds a."""
    return "cycle: " + " -> ".join(reversed(cycle))


# ---------------------------------------------------------------------------------------------- loading
def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _merge(base: Any, over: Any) -> Any:
    """Deep merge: mappings key by key, `None` deletes a key, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _find_refs(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every string that looks like a reference (`${...}`), with where it is."""
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in _find_refs(v, (*path, str(k)))]
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in _find_refs(v, (*path, str(i)))]
    if isinstance(node, str) and node.strip().startswith("${"):
        return [(path, node.strip())]
    return []


def _load_spec_data(spec: str | dict[str, Any], base: Path | None) -> tuple[dict[str, Any], str]:
    if isinstance(spec, dict):
        return copy.deepcopy(spec), "inline"
    path = Path(spec)
    if not path.is_absolute() and base is not None:
        path = base / path
    data = read_document(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a mapping")
    return data, str(path)


def _stage(name: str, sf: StageFile, defaults: MarketSettings, base: Path | None) -> Stage:
    def pick(key: str) -> Any:
        own = getattr(sf, key)
        if own is not None:
            return own
        dflt = getattr(defaults, key)
        return dflt if dflt is not None else MARKET_DEFAULTS[key]

    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "inline"
    try:
        raw, source = _load_spec_data(sf.spec, base)
        raw = _merge(raw, sf.override)
    except SpecError as err:
        problems.append(f"stage {name}: {err}")
    refs: list[Ref] = []
    for path, text in _find_refs(raw):
        m = REF_RE.match(text)
        where = ".".join(path)
        if m is None:
            problems.append(f"stage {name}: {where}: {text!r} is not a reference; write ${{stage.output}}")
        elif path not in BLOB_SLOTS:
            problems.append(f"stage {name}: {where}: a reference may stand only where a blob id goes "
                            f"({', '.join('.'.join(p) for p in BLOB_SLOTS)})")
        else:
            refs.append(Ref(m.group(1), m.group(2), path))
    stage = Stage(name=name, raw=raw, refs=refs, replicas=int(pick("replicas")),
                  max_price=int(to_wei(pick("max_price"))),
                  min_collateral=int(to_wei(pick("min_collateral"))), bid_window=float(pick("bid_window")),
                  grace=float(pick("grace")), run_seconds=pick("run_seconds"), window=pick("window"), source=source,
                  problems=problems)
    if not problems:
        checked = copy.deepcopy(raw)
        for ref in refs:
            _set(checked, ref.path, placeholder(ref.text))
        try:
            stage.spec = parse_spec(checked, source=f"stage {name} ({source})")
        except SpecError as err:
            problems.append(str(err))
    return stage


def parse_pipeline(data: Any, *, base: Path | None = None, source: str = "pipeline",
                   path: Path | None = None) -> Pipeline:
    """Validate the file's schema and build the stages. Stage-level problems (unreadable spec files, invalid
    specs, misplaced references) are collected on the stages for `validate` to report all at once; a file
    whose shape is wrong raises PipelineError."""
    from marketplace.types import to_wei

    if not isinstance(data, dict):
        raise PipelineError(f"{source}: a pipeline is a mapping, got {type(data).__name__}")
    try:
        pf = PipelineFile.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
        raise PipelineError(f"{source}: invalid pipeline: {problems}") from None
    pipe_problems = [f"stage {n!r}: a stage name is a letter then letters, digits, '-' or '_'"
                     for n in pf.stages if not STAGE_NAME_RE.match(n)]
    stages = {n: _stage(n, s, pf.defaults, base) for n, s in pf.stages.items()}
    return Pipeline(name=pf.name, budget=int(to_wei(pf.budget)), stages=stages, path=path,
                    description=pf.description, problems=pipe_problems)


def load_pipeline(path: Path | str) -> Pipeline:
    """Read a pipeline file (YAML or JSON). Raises PipelineError."""
    path = Path(path)
    data = read_document(path, what="pipeline", error=PipelineError)
    return parse_pipeline(data, base=path.parent, source=str(path), path=path.resolve())
