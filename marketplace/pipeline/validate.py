"""`validate`: everything that can be wrong with a pipeline, found before any money moves.

Checks, each problem one line: the file and every stage's spec parse; the DAG has no cycle; every reference
names a known stage and an output that stage produces, in a slot that takes that kind of output; weights go
only to stages of the same architecture and hyperparameters; every literal blob is in the store; data tensors
(read from safetensors headers, or predicted for a stage's future outputs) fit the consuming architecture; and
the budget covers each stage's and all stages' max price x replicas. No chain, no network, no torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from marketplace.archs import get_arch, validate_params
from marketplace.blobs import BlobStore
from marketplace.pipeline.model import Pipeline, Ref, Stage, cycle_message, find_cycle, placeholder
from marketplace.types import from_wei

#: name -> (safetensors dtype tag, shape). A shape entry of -1 is unknown.
Tensors = dict[str, tuple[str, list[int]]]

#: What each slot of a spec accepts from another stage.
SLOT_TAKES: dict[str, str | None] = {"model.weights": "weights", "data.inputs": "logits", "data.labels": "labels",
                                     "training.order": None}
MAX_HEADER = 64 * 1024 * 1024


def stage_outputs(stage: Stage) -> list[str]:
    """What a settled stage exposes to later stages (see docs/pipelines.md)."""
    spec = stage.spec
    if spec is None:
        return []
    if spec.kind in ("train", "finetune"):
        return ["weights"]
    if spec.kind == "evaluate":
        return ["metrics"]
    return ["labels"] if spec.determinism == "label" else ["logits"]


def read_header(path: Path) -> Tensors:
    """The tensor table of a safetensors file, reading only its header. Raises ValueError when it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER:
            raise ValueError("not safetensors (absurd header length)")
        raw = f.read(n)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not safetensors (the header does not parse)") from None
    if not isinstance(table, dict):
        raise ValueError("not safetensors (the header is not an object)")
    return {k: (str(v["dtype"]), [int(d) for d in v["shape"]]) for k, v in table.items()
            if k != "__metadata__" and isinstance(v, dict) and "dtype" in v and "shape" in v}


def _fmt(shape: list[int]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _kind(tag: str) -> str:
    return "float" if tag.startswith(("F", "BF")) else "int"


def _norm_params(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters with defaults written out; minilm's train_encoder left out (it only says what trains)."""
    try:
        p = validate_params(arch, params).model_dump()
    except Exception:  # noqa: BLE001 - the spec check reports bad params
        return dict(params)
    p.pop("train_encoder", None)
    return p


def _num_outputs(arch: str, params: dict[str, Any]) -> int:
    p = validate_params(arch, params)
    return int(getattr(p, "out_features", None) or p.num_classes)  # type: ignore[attr-defined]


class _Checker:
    def __init__(self, pipe: Pipeline, store: BlobStore) -> None:
        self.pipe = pipe
        self.store = store
        self.problems: list[str] = []
        self.cyclic = False
        self._inputs_cache: dict[str, Tensors | None] = {}

    def add(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    # ---------------------------------------------------------------- references
    def producer(self, ref: Ref) -> Stage | None:
        return self.pipe.stages.get(ref.stage)

    def check_refs(self, stage: Stage) -> None:
        for ref in stage.refs:
            src = self.producer(ref)
            if src is None:
                self.add(f"stage {stage.name}: {ref.where} names unknown stage {ref.stage!r} ({ref.text}); "
                         f"stages: {', '.join(self.pipe.stages)}")
                continue
            if src.spec is None:
                continue  # its own spec problem is reported
            outs = stage_outputs(src)
            if ref.output not in outs:
                self.add(f"stage {stage.name}: {ref.where} names output {ref.output!r} of stage {src.name}, which "
                         f"produces only {', '.join(outs)} ({ref.text})")
                continue
            takes = SLOT_TAKES[ref.where]
            if takes != ref.output:
                what = f"takes a {takes} output" if takes else "takes no stage output"
                self.add(f"stage {stage.name}: {ref.where} cannot take {ref.text} (a {ref.output} output); "
                         f"{ref.where} {what}")
                continue
            if ref.output == "weights" and stage.spec is not None:
                self.check_weights(stage, src, ref)

    def check_weights(self, stage: Stage, src: Stage, ref: Ref) -> None:
        assert stage.spec is not None and src.spec is not None
        a, b = src.spec.model, stage.spec.model
        pa, pb = _norm_params(a.arch, dict(a.params)), _norm_params(b.arch, dict(b.params))
        if a.arch != b.arch or pa != pb:
            self.add(f"stage {stage.name}: model.weights {ref.text} are {a.arch} weights for "
                     f"{json.dumps(pa, sort_keys=True)}, but the stage declares {b.arch} "
                     f"{json.dumps(pb, sort_keys=True)}")

    # ---------------------------------------------------------------- blobs and shapes
    def literal_blobs(self, stage: Stage) -> list[tuple[str, str]]:
        """(slot, blob id) of every blob the stage names directly."""
        spec = stage.spec
        if spec is None:
            return []
        ph = {placeholder(r.text) for r in stage.refs}
        slots = [("model.weights", spec.model.weights), *((f"data.{k}", v) for k, v in spec.data.items()),
                 ("training.order", spec.training.order if spec.training else None)]
        return [(slot, b) for slot, b in slots if b and b not in ph]

    def check_blobs(self, stage: Stage) -> None:
        for slot, blob in self.literal_blobs(stage):
            if not self.store.has(blob):
                self.add(f"stage {stage.name}: {slot}: blob {blob} is not in the store {self.store.root}")

    def tensors(self, stage: Stage, slot: str) -> tuple[Tensors | None, str]:
        """What the slot will hold, from the store's header or the producer's predicted output; None = unknown."""
        ref = next((r for r in stage.refs if r.where == slot), None)
        if ref is not None:
            src = self.producer(ref)
            if src is None or src.spec is None or ref.output not in stage_outputs(src) or \
                    SLOT_TAKES.get(slot) != ref.output:
                return None, ref.text  # reported by check_refs
            return self.predict(src, ref.output), ref.text
        blob = dict(self.literal_blobs(stage)).get(slot)
        if blob is None or not self.store.has(blob):
            return None, blob or slot
        try:
            return read_header(self.store.path(blob)), blob[:19] + "…"
        except (OSError, ValueError) as err:
            self.add(f"stage {stage.name}: {slot}: blob {blob} is unreadable: {err}")
            return None, blob

    def predict(self, src: Stage, output: str) -> Tensors | None:
        """The tensors `src`'s `output` blob will hold (see runner.split_outputs)."""
        assert src.spec is not None
        inputs = self.inputs_of(src)
        n = _samples(inputs) if inputs else -1
        if output == "logits":
            return {"x": ("F32", [n, _num_outputs(src.spec.model.arch, dict(src.spec.model.params))])}
        if output == "labels":
            return {"y": ("I64", [n] if src.spec.top_k == 1 else [n, src.spec.top_k])}
        return None

    def inputs_of(self, stage: Stage) -> Tensors | None:
        if self.cyclic:
            return None
        if stage.name not in self._inputs_cache:
            self._inputs_cache[stage.name] = None  # guards against recursion through a bad graph
            self._inputs_cache[stage.name] = self.tensors(stage, "data.inputs")[0]
        return self._inputs_cache[stage.name]

    def check_shapes(self, stage: Stage) -> None:
        spec = stage.spec
        if spec is None or self.cyclic:
            return
        inputs, what = self.tensors(stage, "data.inputs")
        n = -1
        if inputs is not None:
            n = self.check_inputs(stage, inputs, what)
        if "labels" in spec.data:
            labels, lwhat = self.tensors(stage, "data.labels")
            if labels is not None:
                self.check_labels(stage, labels, lwhat, n)
        if spec.training is not None and spec.training.order:
            order, owhat = self.tensors(stage, "training.order")
            o = (order or {}).get("order")
            if order is not None and o is None:
                self.add(f"stage {stage.name}: training.order ({owhat}) must hold a tensor 'order', "
                         f"got {sorted(order)}")
            elif o is not None:
                want = [spec.training.epochs, n]
                if _kind(o[0]) != "int" or len(o[1]) != 2 or o[1][0] != want[0] or (n >= 0 and o[1][1] != n):
                    self.add(f"stage {stage.name}: training.order ({owhat}): order is {o[0]} {_fmt(o[1])}, "
                             f"expected int64 {_fmt(want)} (epochs, N)")

    def check_inputs(self, stage: Stage, t: Tensors, what: str) -> int:
        spec = stage.spec
        assert spec is not None
        arch = get_arch(spec.model.arch)
        p = validate_params(spec.model.arch, dict(spec.model.params))
        head = f"stage {stage.name}: data.inputs ({what})"
        if set(t) != set(arch.inputs):
            self.add(f"{head} must hold exactly {sorted(arch.inputs)} for {arch.name}, got {sorted(t)}")
            return -1
        n = -1
        for name, (kind, rank) in arch.inputs.items():
            tag, shape = t[name]
            if _kind(tag) != kind:
                self.add(f"{head}: {name} is {tag}, {arch.name} takes {'a float' if kind == 'float' else 'an int'} "
                         f"type")
            if len(shape) != rank:
                self.add(f"{head}: {name} has shape {_fmt(shape)} (rank {len(shape)}), {arch.name} takes rank {rank}")
                return -1
            if n >= 0 and shape[0] >= 0 and shape[0] != n:
                self.add(f"{head}: {name} has {shape[0]} samples, other inputs have {n}")
            n = shape[0] if shape[0] >= 0 else n
        if arch.name == "mlp@1" and t["x"][1][1] != p.in_features:  # type: ignore[attr-defined]
            self.add(f"{head}: x has shape {_fmt(t['x'][1])}, but mlp@1 with in_features {p.in_features} "  # type: ignore[attr-defined]
                     f"takes [N, {p.in_features}]")  # type: ignore[attr-defined]
        if arch.name == "cnn@1":
            c, s = p.in_channels, p.image_size  # type: ignore[attr-defined]
            if t["x"][1][1:] != [c, s, s]:
                self.add(f"{head}: x has shape {_fmt(t['x'][1])}, but cnn@1 takes [N, {c}, {s}, {s}] "
                         f"(in_channels, image_size)")
        if arch.name in ("transformer@1", "minilm-classifier@1"):
            ids = t["input_ids"][1]
            if not 1 <= ids[1] <= p.max_len:  # type: ignore[attr-defined]
                self.add(f"{head}: input_ids has sequence length {ids[1]}, {arch.name} takes 1..{p.max_len} "  # type: ignore[attr-defined]
                         f"(max_len)")
            if arch.name == "minilm-classifier@1" and t["attention_mask"][1] != ids:
                self.add(f"{head}: attention_mask has shape {_fmt(t['attention_mask'][1])}, input_ids {_fmt(ids)}")
        return n

    def check_labels(self, stage: Stage, t: Tensors, what: str, n: int) -> None:
        spec = stage.spec
        assert spec is not None
        head = f"stage {stage.name}: data.labels ({what})"
        if set(t) != {"y"}:
            self.add(f"{head} must hold exactly ['y'], got {sorted(t)}")
            return
        tag, shape = t["y"]
        c = _num_outputs(spec.model.arch, dict(spec.model.params))
        loss = spec.training.loss if spec.training else ("mse" if _kind(tag) == "float" else "cross_entropy")
        if loss == "cross_entropy":
            if _kind(tag) != "int" or len(shape) != 1:
                self.add(f"{head}: y is {tag} {_fmt(shape)}, expected int64 [N] class ids for cross_entropy")
            elif n >= 0 and shape[0] >= 0 and shape[0] != n:
                self.add(f"{head}: y has {shape[0]} labels, data.inputs has {n} samples")
            return
        want = [n, c]
        got = shape + [1] if len(shape) == 1 and c == 1 else shape
        if _kind(tag) != "float" or len(got) != 2 or got[1] != c or (n >= 0 and got[0] >= 0 and got[0] != n):
            self.add(f"{head}: y is {tag} {_fmt(shape)}, expected float {_fmt(want)} targets for mse")

    # ---------------------------------------------------------------- budget
    def check_budget(self) -> None:
        budget = self.pipe.budget
        total = 0
        for s in self.pipe.stages.values():
            total += s.reserve
            if s.reserve > budget:
                self.add(f"stage {s.name}: max price {from_wei(s.max_price)} x {s.replicas} replica(s) = "
                         f"{from_wei(s.reserve)} AGORA exceeds the budget {from_wei(budget)} AGORA")
        if total > budget:
            self.add(f"budget: the stages may cost up to {from_wei(total)} AGORA (max price x replicas, summed), "
                     f"over the budget {from_wei(budget)} AGORA")


def _samples(t: Tensors) -> int:
    ns = [shape[0] for _, shape in t.values() if shape and shape[0] >= 0]
    return ns[0] if ns else -1


def validate(pipe: Pipeline, store: BlobStore) -> list[str]:
    """Every problem of `pipe`, one line each, in a stable order (empty: valid). Never raises for content."""
    c = _Checker(pipe, store)
    for msg in pipe.problems:
        c.add(msg)
    for s in pipe.stages.values():
        for msg in s.problems:
            c.add(msg)
    cycle = find_cycle(pipe.graph())
    if cycle:
        c.cyclic = True
        c.add(cycle_message(cycle))
    for s in pipe.stages.values():
        c.check_refs(s)
        c.check_blobs(s)
    for s in pipe.stages.values():
        c.check_shapes(s)
    c.check_budget()
    return c.problems
