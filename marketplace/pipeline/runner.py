"""Run a pipeline over the market: one `Requester`, each stage submitted as soon as its inputs are settled.

    report = run_pipeline_sync(load_pipeline("p.yaml"), market=market, store=requester_store, blobs=blob_store,
                               key=p2p_key, bootstrap=[...])

Order of things: `validate` (nothing is sent when it finds a problem), the state directory is opened (a resumed
run is checked against the file), ONE requester host starts, the funds for the unfinished stages are checked
(with `approve`, approved once), then a scheduler starts every stage whose dependencies are done, in parallel,
as long as spent + reserved + the stage's max price x k stays within the budget. A stage: resolve references
to blob ids, `Requester.submit(wait=False, on_announced=...)` (the announcement id is in state.json before
anything is published), wait for settlement, split the verified outputs into blobs (`split_outputs`), record.
A resumed stage goes through the requester database instead (see `_recover`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from marketplace.blobs import BlobStore
from marketplace.errors import AgoraError
from marketplace.pipeline.model import Pipeline, PipelineInvalidError, Stage, load_pipeline
from marketplace.pipeline.state import Budget, PipelineState, StageRecord, default_state_dir
from marketplace.pipeline.validate import validate
from marketplace.spec import JobSpec
from marketplace.types import from_wei

log = logging.getLogger(__name__)

#: Outputs of a training stage that are not model parameters.
NON_PARAMETER_OUTPUTS = frozenset({"loss_curve"})


class StageFailedError(AgoraError):
    """A stage's job did not settle with verified outputs."""


@dataclass
class StageEvent:
    """A progress event: `event` is one of resumed, announced, opened, settled, done, failed, skipped,
    waiting-budget; `message` says it for people."""

    stage: str
    event: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageReport:
    name: str
    kind: str
    status: str
    job_id: str | None
    spec_hash: str | None
    result_hash: str | None
    outputs: dict[str, str]
    metrics: dict[str, float]
    cost: int
    seconds: float | None
    times: dict[str, float]
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "status": self.status, "jobId": self.job_id,
                "specHash": self.spec_hash, "resultHash": self.result_hash, "outputs": self.outputs,
                "metrics": self.metrics, "cost": str(self.cost), "costTokens": from_wei(self.cost),
                "seconds": self.seconds, "times": self.times, "error": self.error}


@dataclass
class PipelineReport:
    name: str
    state_dir: str
    budget: int
    stages: list[StageReport]
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(s.status == "done" for s in self.stages)

    @property
    def total_cost(self) -> int:
        return sum(s.cost for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.name, "ok": self.ok, "stateDir": self.state_dir, "budget": str(self.budget),
                "totalCost": str(self.total_cost), "totalCostTokens": from_wei(self.total_cost),
                "wallSeconds": round(self.wall_s, 3), "stages": [s.to_json() for s in self.stages]}


def report_of(state: PipelineState, wall_s: float = 0.0) -> PipelineReport:
    """The report of a state (also what `agora pipeline status` shows)."""
    rows = []
    for name, r in state.stages.items():
        t = r.times
        secs = round(t["done"] - t["started"], 3) if "done" in t and "started" in t else None
        rows.append(StageReport(name=name, kind=r.kind, status=r.status, job_id=r.job_id, spec_hash=r.spec_hash,
                                result_hash=r.result_hash, outputs=dict(r.outputs), metrics=dict(r.metrics),
                                cost=r.spent, seconds=secs, times=dict(t), error=r.error))
    return PipelineReport(name=state.pipeline, state_dir=str(state.dir), budget=int(state.budget), stages=rows,
                          wall_s=wall_s)


# ---------------------------------------------------------------------------------------------- outputs
def split_outputs(out_dir: Path, spec: JobSpec, blobs: BlobStore) -> tuple[dict[str, str], dict[str, float]]:
    """Turn a settled job's verified outputs into canonical blobs in `blobs`; returns ({output: blob id},
    metrics). train/finetune -> `weights` (every parameter, `loss_curve` left out); evaluate -> `metrics`
    (loss, accuracy); inference -> `logits` stored as {"x": float32 [N, C]} so it feeds an mlp stage as its
    inputs, or under the label profile `labels` stored as {"y": int64 [N]} (top_k 1; [N, top_k] otherwise)."""
    import numpy as np

    from marketplace.results import OUTPUTS_FILE, verify_result_dir
    from marketplace.tensors import dump_tensors, load_tensors

    verify_result_dir(out_dir)  # the engine verified them on arrival; a file edited since must not travel on
    tensors = load_tensors((Path(out_dir) / OUTPUTS_FILE).read_bytes(), what=str(out_dir / OUTPUTS_FILE))
    metrics: dict[str, float] = {}
    if spec.kind in ("train", "finetune"):
        out = {"weights": {k: v for k, v in tensors.items() if k not in NON_PARAMETER_OUTPUTS}}
        if "loss_curve" in tensors and tensors["loss_curve"].size:
            metrics["final_loss"] = float(tensors["loss_curve"][-1])
    elif spec.kind == "evaluate":
        out = {"metrics": tensors}
        metrics = {k: float(v) for k, v in tensors.items() if v.size == 1}
    elif "labels" in tensors:
        y = tensors["labels"]
        out = {"labels": {"y": np.ascontiguousarray(y[:, 0]) if y.ndim == 2 and y.shape[1] == 1 else y}}
    else:
        out = {"logits": {"x": tensors["logits"]}}
    return {name: blobs.put_bytes(dump_tensors(t)) for name, t in out.items()}, metrics


# ---------------------------------------------------------------------------------------------- the run
class _Run:
    def __init__(self, pipe: Pipeline, state: PipelineState, req: Any, blobs: BlobStore,
                 progress: Callable[[StageEvent], None]) -> None:
        self.pipe, self.state, self.req, self.blobs, self.progress = pipe, state, req, blobs, progress
        self.store = req.store
        self.budget = Budget(pipe.budget, state)
        self.running: set[str] = set()
        self.finished: set[str] = set()  # done, failed or skipped in this run
        self.changed = trio.Event()

    def say(self, stage: str, event: str, message: str, **data: Any) -> None:
        self.progress(StageEvent(stage, event, message, data))

    def save(self) -> None:
        self.state.save()

    async def run(self) -> None:
        order = self.pipe.order()
        async with trio.open_nursery() as nursery:
            while True:
                self._start_ready(order, nursery)
                if not self.running:
                    return
                await self.changed.wait()
                self.changed = trio.Event()

    def _start_ready(self, order: list[str], nursery: trio.Nursery) -> None:
        for name in order:
            rec = self.state.stages[name]
            if name in self.running or name in self.finished:
                continue
            if rec.status == "done":
                self.finished.add(name)
                continue
            deps = self.pipe.stages[name].deps
            bad = [d for d in deps if d in self.finished and self.state.stages[d].status != "done"]
            if bad:
                rec.status, rec.error = "failed", f"skipped: stage {bad[0]} did not finish"
                self.finished.add(name)
                self.save()
                self.say(name, "skipped", rec.error)
                continue
            if not all(self.state.stages[d].status == "done" for d in deps):
                continue
            need = self._reservation(name, rec)
            if not self.budget.try_reserve(name, need):
                if self.budget.in_flight:
                    continue  # a running stage will free its reservation
                rec.status = "failed"
                rec.error = (f"budget: spent {from_wei(self.state.spent())} + this stage's {from_wei(need)} AGORA "
                             f"would exceed the budget {from_wei(self.pipe.budget)} AGORA")
                self.finished.add(name)
                self.save()
                self.say(name, "failed", rec.error)
                continue
            self.running.add(name)
            nursery.start_soon(self._stage, name)

    def _reservation(self, name: str, rec: StageRecord) -> int:
        """An opened job holds what its winners asked; anything else may still cost max price x k."""
        if rec.job_id and rec.winners:
            return sum(int(w["price"]) for w in rec.winners)
        return self.pipe.stages[name].reserve

    async def _stage(self, name: str) -> None:
        rec, stage = self.state.stages[name], self.pipe.stages[name]
        try:
            waiting = await self._recover(name, rec)
            if waiting is None:
                await self._submit(name, stage, rec)
            await self._finish(name, stage, rec)
        except Exception as err:  # noqa: BLE001 - one stage's failure must not stop the others
            if not isinstance(err, AgoraError):
                log.exception("stage %s", name)
            rec.status, rec.error = "failed", str(err) if isinstance(err, AgoraError) else f"{type(err).__name__}: {err}"
            rec.times["failed"] = time.time()
            self.save()
            self.say(name, "failed", f"stage {name} failed: {rec.error}")
        finally:
            self.budget.release(name)
            self.running.discard(name)
            self.finished.add(name)
            self.changed.set()

    async def _recover(self, name: str, rec: StageRecord) -> str | None:
        """Pick up where an earlier run stopped. Returns the job id to wait for, or None to submit afresh."""
        if rec.status == "failed":
            rec.retry()
            self.save()
            return None
        if rec.ann_id is None:
            return None
        row = self.store.job(rec.ann_id)
        if row is not None and row.job_id is None and row.state == "opening":
            await trio.to_thread.run_sync(self.req.recover_opened, row)
            row = self.store.job(rec.ann_id)
        if row is None or row.job_id is None:
            if row is not None and row.state == "announced":  # its bid window died with the old process
                self.store.update_job(row.ann_id, state="failed", error="interrupted before the job was opened")
            self.say(name, "resumed", f"stage {name}: announcement {rec.ann_id[:10]} never opened a job "
                                      f"(nothing paid); announcing again")
            rec.retry()
            self.save()
            return None
        rec.job_id, rec.status = row.job_id, "open"
        rec.winners = row.winners
        rec.out_dir = row.out_dir
        self.save()
        if row.state not in ("settled", "failed"):
            await self.req.resume_job(row.ann_id)
        self.say(name, "resumed", f"stage {name}: resuming job {row.job_id} ({row.state})", job_id=row.job_id)
        return row.job_id

    async def _submit(self, name: str, stage: Stage, rec: StageRecord) -> None:
        outputs = {n: r.outputs for n, r in self.state.stages.items() if r.status == "done"}
        spec = stage.resolve(outputs)
        attempt = len(rec.attempts) + 1
        out_dir = self.state.dir / "stages" / name / str(attempt)  # type: ignore[operator]
        rec.kind, rec.spec_hash, rec.reserved = spec.kind, "0x" + spec.spec_hash().hex(), str(stage.reserve)
        rec.out_dir = str(out_dir)
        rec.times["started"] = time.time()
        self.save()

        def announced(ann_id: str) -> None:
            rec.ann_id, rec.status = ann_id, "announced"
            rec.times["announced"] = time.time()
            self.save()
            self.say(name, "announced", f"stage {name}: announced {spec.kind} job {ann_id[:10]}", ann_id=ann_id)

        outcome = await self.req.submit(spec, k=stage.replicas, max_price=stage.max_price,
                                        min_collateral=stage.min_collateral, bid_window=stage.bid_window,
                                        grace=stage.grace, run_seconds=stage.run_seconds, window=stage.window,
                                        approve=False, wait=False, out_dir=out_dir, on_announced=announced)
        rec.job_id, rec.status, rec.winners = outcome.job_id, "open", outcome.winners
        rec.times["opened"] = time.time()
        self.save()
        who = ", ".join(f"{w['provider'][:10]} at {from_wei(int(w['price']))}" for w in outcome.winners)
        self.say(name, "opened", f"stage {name}: opened job {outcome.job_id}; winners {who}",
                 job_id=outcome.job_id, winners=outcome.winners)

    async def _finish(self, name: str, stage: Stage, rec: StageRecord) -> None:
        assert rec.job_id is not None and rec.ann_id is not None
        row = self.store.job(rec.ann_id)
        done_file = Path((row.out_dir if row else None) or rec.out_dir or "") / "settlement.json"
        if row is None or row.state not in ("settled", "failed") or not done_file.exists():
            active = await self.req.resume_job(rec.ann_id)  # the engine's watcher of this job (started by submit)
            if active is not None:
                await self.req.wait(active)
        settlement = json.loads(done_file.read_text())  # written by the engine when the job settled
        row = self.store.job(rec.ann_id)
        refund = int(settlement.get("refund") or 0)
        rec.cost = str(max(0, sum(int(w["price"]) for w in settlement.get("winners", rec.winners)) - refund))
        rec.gas = dict(row.gas) if row else {}
        rec.times["settled"] = time.time()
        if row is None or row.state != "settled":
            raise StageFailedError(f"job {rec.job_id} {settlement.get('outcome')}: "
                                   f"{(row.error if row else None) or settlement.get('error') or 'no verified outputs'}")
        rec.result_hash = settlement.get("result")
        self.say(name, "settled", f"stage {name}: job {rec.job_id[:10]} settled, result {str(rec.result_hash)[:12]}, "
                                  f"cost {from_wei(int(rec.cost))} AGORA", job_id=rec.job_id)
        assert stage.spec is not None
        out_dir = Path(row.out_dir or rec.out_dir or "")
        rec.outputs, rec.metrics = await trio.to_thread.run_sync(split_outputs, out_dir, stage.spec, self.blobs)
        rec.status, rec.error = "done", None
        rec.times["done"] = time.time()
        self.save()
        shown = ", ".join(f"{k}={v}" for k, v in rec.outputs.items())
        extra = "".join(f", {k} {v:.4g}" for k, v in rec.metrics.items())
        self.say(name, "done", f"stage {name}: outputs {shown}{extra}", outputs=rec.outputs)


def _quiet(_: StageEvent) -> None:
    return None


def prepare(pipe: Pipeline | Path | str, blobs: BlobStore) -> Pipeline:
    """Load (when given a path) and validate; raises PipelineInvalidError listing every problem."""
    p = pipe if isinstance(pipe, Pipeline) else load_pipeline(pipe)
    problems = validate(p, blobs)
    if problems:
        raise PipelineInvalidError(problems)
    return p


async def run_pipeline(pipe: Pipeline | Path | str, *, market: Any, store: Any, blobs: BlobStore, key: Any,
                       state_dir: Path | None = None, bootstrap: list[str] = (),  # type: ignore[assignment]
                       listen: str = "/ip4/127.0.0.1/tcp/0", approve: bool = False,
                       progress: Callable[[StageEvent], None] | None = None,
                       requester_progress: Callable[[str], None] | None = None) -> PipelineReport:
    """Validate, then run (or resume) the pipeline to the end; returns the report (per-stage outputs, hashes,
    cost, times). Raises PipelineInvalidError (nothing sent), PipelineChangedError (a paid stage changed),
    InsufficientFundsError (funds for the unfinished stages missing; nothing announced)."""
    from marketplace.config import load_settings
    from marketplace.requester import Requester

    t0 = time.time()
    p = prepare(pipe, blobs)
    directory = Path(state_dir) if state_dir else default_state_dir(load_settings().home, p.name)
    state = PipelineState.open(directory, p, market.address)
    state.save()
    emit = progress or _quiet
    async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap), listen=listen,
                              progress=requester_progress) as req:
        left = [n for n, r in state.stages.items() if r.status != "done" and n in p.stages]
        need = sum(p.stages[n].reserve for n in left if not state.stages[n].job_id)
        if need:
            await req.ensure_funds(need, approve=approve)
        await _Run(p, state, req, blobs, emit).run()
    return report_of(state, time.time() - t0)


def run_pipeline_sync(pipe: Pipeline | Path | str, **kwargs: Any) -> PipelineReport:
    """`run_pipeline` from synchronous code (the CLI, benchmarks)."""
    from marketplace.requester.engine import _run

    async def main() -> PipelineReport:
        return await run_pipeline(pipe, **kwargs)

    return _run(main)
