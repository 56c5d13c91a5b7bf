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
from pydantic import ConfigDict, Field, computed_field, field_serializer
from pydantic.alias_generators import to_camel

from marketplace.blobs import BlobStore
from marketplace.errors import AgoraError, PipelineInvalidError, StageFailedError, StageHeldError
from marketplace.fsutil import atomic_write_json
from marketplace.models import Model, WeiInt
from marketplace.pipeline.model import Pipeline, Stage, load_pipeline
from marketplace.pipeline.state import Budget, PipelineState, StageRecord, default_state_dir
from marketplace.pipeline.validate import validate
from marketplace.spec import JobSpec
from marketplace.types import from_wei

log = logging.getLogger(__name__)

#: Outputs of a training stage that are not model parameters.
NON_PARAMETER_OUTPUTS = frozenset({"loss_curve"})


#: Requester job states in which money is (or may be) locked in a job that has not settled.
UNSETTLED_STATES = ("opening", "open", "committed", "revealed")


# ---------------------------------------------------------------------------------------------- retry policy
@dataclass(frozen=True)
class Plan:
    """What to do with a stage that is not done. `action`: submit (announce afresh), resume (watch the recorded
    job to settlement), finish (settled with outputs: record and split them), refetch (completed on chain
    without outputs: watch again so the engine fetches them), hold (its job may still open: stop, pay nothing)."""

    action: str
    reason: str


def plan_stage(ann_id: str | None, row: Any, outcome: str | None) -> Plan:
    """The pipeline's rule against paying twice. A stage is announced again only when its last job provably
    never opened (nothing announced, no bids, an interrupted bid window, a definite revert, or `recover_opened`
    proved it) or settled on chain without a result (failed, expired...: what it cost is counted, then it is
    bought again). A job that opened, or may have, is resumed or waited for, whatever the stage's status says.
    `row` is the requester database's row of `ann_id` (after `recover_opened` for a row in "opening");
    `outcome` the chain's outcome of a "failed" row's job ("completed", "expired", ...; None: not settled)."""
    if ann_id is None:
        return Plan("submit", "nothing announced yet")
    if row is None:
        return Plan("hold", f"announcement {ann_id} is not in the requester database: whether its job opened "
                            f"cannot be checked, so it is not bought again (use that account's database, or a "
                            f"new --state)")
    if row.job_id is None:
        if row.state in ("announced", "no-bids", "failed"):
            return Plan("submit", f"its job never opened ({row.error or row.state}): nothing was paid")
        if row.state == "opening":
            return Plan("hold", f"its openJob may still be mined ({row.error or 'no receipt yet'}); run again later")
        return Plan("hold", f"its requester job is {row.state!r} without a job id")
    if row.state in UNSETTLED_STATES:
        return Plan("resume", f"job {row.job_id} is {row.state}")
    if row.state == "settled":
        return Plan("finish", f"job {row.job_id} settled with verified outputs")
    if outcome is None:
        return Plan("resume", f"job {row.job_id} has not settled on chain")
    if outcome == "completed":
        return Plan("refetch", f"job {row.job_id} completed on chain; fetching its outputs again")
    return Plan("submit", f"job {row.job_id} settled as {outcome}; its cost counts")


def cost_of(settlement: dict[str, Any], winners: list[dict[str, Any]]) -> int:
    """What a settled job cost the requester: the winners' prices less the refund (compensation for slashed
    collateral is credited separately and not netted)."""
    refund = int(settlement.get("refund") or 0)
    return max(0, sum(int(w["price"]) for w in settlement.get("winners") or winners) - refund)


def settlement_from_chain(row: Any, view: Any) -> dict[str, Any]:
    """settlement.json as the engine writes it, rebuilt from the requester row and the chain's JobSettled (for
    a job whose file a crash lost). `outputsVerified` is what the row says: "settled" means verified."""
    s = view.settlement or {}
    return {"jobId": row.job_id, "annId": row.ann_id,
            "outcome": view.outcome.name.lower() if view.outcome is not None else "unknown",
            "result": "0x" + bytes(s.get("result", b"\x00" * 32)).hex(), "winners": row.winners,
            "paidMask": s.get("paidMask"), "slashedMask": s.get("slashedMask"), "refund": str(s.get("refund", 0)),
            "compensation": str(s.get("compensation", 0)), "gas": row.gas, "timings": row.timings,
            "outputsVerified": row.state == "settled", "error": row.error,
            "rebuilt": "from the chain and the requester database (settlement.json was missing)"}


@dataclass
class StageEvent:
    """A progress event: `event` is one of resumed, announced, opened, settled, done, failed, skipped,
    waiting-budget; `message` says it for people."""

    stage: str
    event: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class StageReport(Model):
    """One stage in the report (`--json`: camelCase keys, wei as decimal strings)."""

    model_config = ConfigDict(alias_generator=to_camel)

    name: str
    kind: str
    status: str
    job_id: str | None
    spec_hash: str | None
    result_hash: str | None
    outputs: dict[str, str]
    metrics: dict[str, float]
    cost: WeiInt
    seconds: float | None
    times: dict[str, float]
    error: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_tokens(self) -> str:
        return from_wei(self.cost)


class PipelineReport(Model):
    """A pipeline run (`--json`: camelCase keys, wei as decimal strings)."""

    model_config = ConfigDict(alias_generator=to_camel)

    name: str = Field(alias="pipeline")
    state_dir: str
    budget: WeiInt
    stages: list[StageReport]
    wall_s: float = Field(alias="wallSeconds")

    @field_serializer("wall_s")
    def _wall(self, value: float) -> float:
        return round(value, 3)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(s.status == "done" for s in self.stages)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_cost(self) -> WeiInt:
        return sum(s.cost for s in self.stages)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_cost_tokens(self) -> str:
        return from_wei(self.total_cost)


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
def split_outputs(out_dir: Path, spec: JobSpec, blobs: BlobStore,
                  expect: str | None = None) -> tuple[dict[str, str], dict[str, float]]:
    """Turn a settled job's verified outputs into canonical blobs in `blobs`; returns ({output: blob id},
    metrics). train/finetune -> `weights` (every parameter, `loss_curve` left out); evaluate -> `metrics`
    (loss, accuracy); inference -> `logits` stored as {"x": float32 [N, C]} so it feeds an mlp stage as its
    inputs, or under the label profile `labels` stored as {"y": int64 [N]} (top_k 1; [N, top_k] otherwise).
    `expect`: the result hash that settled on chain, which the outputs must hash to (StageFailedError)."""
    import numpy as np

    from marketplace.results import OUTPUTS_FILE, verify_result_dir
    from marketplace.tensors import dump_tensors, load_tensors

    # The engine verified them on arrival; a file edited since must not travel on.
    root = verify_result_dir(out_dir).hex
    if expect is not None and root.lower() != expect.lower():
        raise StageFailedError(f"the outputs in {out_dir} hash to {root}, not to the settled result {expect}")
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
                held = sum(self.budget.held.values())
                rec.error = (f"budget: spent {from_wei(self.state.spent())} + "
                             + (f"held {from_wei(held)} (jobs that may still cost) + " if held else "")
                             + f"this stage's {from_wei(need)} AGORA would exceed the budget "
                               f"{from_wei(self.pipe.budget)} AGORA")
                self.finished.add(name)
                self.save()
                self.say(name, "failed", rec.error)
                continue
            self.running.add(name)
            nursery.start_soon(self._stage, name)

    def _reservation(self, name: str, rec: StageRecord) -> int:
        """A job that will be resumed holds what its winners asked, less what is already counted as spent;
        anything that may announce again may still cost max price x k."""
        row = self.store.job(rec.ann_id) if rec.ann_id else None
        if rec.job_id and rec.winners and row is not None and row.job_id == rec.job_id and row.state != "failed":
            return max(0, sum(int(w["price"]) for w in rec.winners) - int(rec.cost))
        return self.pipe.stages[name].reserve

    async def _stage(self, name: str) -> None:
        rec, stage = self.state.stages[name], self.pipe.stages[name]
        hold = False
        try:
            plan = await self._recover(name, rec)
            if plan.action == "hold":
                raise StageHeldError(plan.reason)
            if plan.action == "submit":
                await self._submit(name, stage, rec)
            await self._finish(name, stage, rec, refetch=plan.action == "refetch")
        except Exception as err:  # noqa: BLE001 - one stage's failure must not stop the others
            if not isinstance(err, AgoraError):
                log.exception("stage %s", name)
            rec.status = "failed"
            rec.error = str(err) if isinstance(err, AgoraError) else f"{type(err).__name__}: {err}"
            rec.times["failed"] = time.time()
            self.save()
            hold = self._may_still_cost(rec)
            self.say(name, "failed", f"stage {name} failed: {rec.error}")
        finally:
            if hold:
                self.budget.hold(name)
            else:
                self.budget.release(name)
            self.running.discard(name)
            self.finished.add(name)
            self.changed.set()

    def _may_still_cost(self, rec: StageRecord) -> bool:
        """Whether a stopped stage's job is open on chain, or may be (or the database cannot say)."""
        if rec.ann_id is None:
            return False
        row = self.store.job(rec.ann_id)
        return row is None or row.state in UNSETTLED_STATES

    async def _recover(self, name: str, rec: StageRecord) -> Plan:
        """Pick up where an earlier run (or attempt) stopped, from the requester database and the chain, never
        from the stage's own status: a `failed` stage whose job opened, or may have, is resumed, never bought
        again. Returns the plan (`plan_stage`) after doing its bookkeeping."""
        row = self.store.job(rec.ann_id) if rec.ann_id else None
        if row is not None and row.job_id is None and row.state == "opening":
            await trio.to_thread.run_sync(self.req.recover_opened, row)
            row = self.store.job(row.ann_id)
        outcome = None
        if row is not None and row.job_id and row.state == "failed":
            view = await trio.to_thread.run_sync(self.req.market.job, row.job_id)
            outcome = (view.outcome.name.lower() if view.outcome is not None else "settled") if view.settled else None
        plan = plan_stage(rec.ann_id, row, outcome)
        if plan.action == "submit":
            await self._close_attempt(name, rec, row, plan)
        elif plan.action != "hold":
            assert row is not None
            rec.job_id, rec.status, rec.error = row.job_id, "open", None
            rec.winners = row.winners
            rec.out_dir = row.out_dir or rec.out_dir
            self.save()
            self.say(name, "resumed", f"stage {name}: resuming job {row.job_id} ({row.state}): {plan.reason}",
                     job_id=row.job_id)
        return plan

    async def _close_attempt(self, name: str, rec: StageRecord, row: Any, plan: Plan) -> None:
        """Before announcing again: mark an interrupted announcement failed, count what a job that settled
        without outputs really cost, and move the attempt into `attempts`."""
        if rec.ann_id is None and not rec.error:
            return
        if row is not None and row.state == "announced":  # its bid window died with the old process
            self.store.update_job(row.ann_id, state="failed", error="interrupted before the job was opened")
        if row is not None and row.job_id:
            settlement = await self._settlement(rec, row)
            rec.job_id, rec.winners = row.job_id, row.winners
            rec.cost = str(cost_of(settlement, row.winners))
        if rec.ann_id:
            self.say(name, "resumed", f"stage {name}: announcement {rec.ann_id[:10]}: {plan.reason}; announcing again")
        rec.retry()
        self.save()

    async def _settlement(self, rec: StageRecord, row: Any) -> dict[str, Any]:
        """The job's settlement.json, or, when a crash lost it, the same facts rebuilt from the chain and the
        requester database (and written, so `status` and later runs see them)."""
        path = Path(row.out_dir or rec.out_dir or "") / "settlement.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        view = await trio.to_thread.run_sync(self.req.market.job, row.job_id)
        if not view.settled:
            raise StageFailedError(f"job {row.job_id} has not settled yet")
        doc = settlement_from_chain(row, view)
        atomic_write_json(path, doc)
        return doc

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

    async def _finish(self, name: str, stage: Stage, rec: StageRecord, *, refetch: bool = False) -> None:
        """Wait for the job to settle, record its real cost, split its verified outputs. `refetch`: the job
        completed but its outputs were not fetched: watch it again (the engine fetches them anew)."""
        assert rec.job_id is not None and rec.ann_id is not None
        row = self.store.job(rec.ann_id)
        if row is None or row.state not in ("settled", "failed") or refetch:
            active = await self.req.resume_job(rec.ann_id)  # the engine's watcher of this job (started by submit)
            if active is not None:
                await self.req.wait(active)
            row = self.store.job(rec.ann_id)
        if row is None:
            raise StageFailedError(f"announcement {rec.ann_id} is not in the requester database {self.store.path}")
        settlement = await self._settlement(rec, row)
        rec.cost = str(cost_of(settlement, rec.winners))
        rec.gas = dict(row.gas)
        rec.times["settled"] = time.time()
        if row.state != "settled":
            self.save()
            raise StageFailedError(f"job {rec.job_id} {settlement.get('outcome')}: "
                                   f"{row.error or settlement.get('error') or 'no verified outputs'}")
        rec.result_hash = settlement.get("result")
        self.save()
        self.say(name, "settled", f"stage {name}: job {rec.job_id[:10]} settled, result {str(rec.result_hash)[:12]}, "
                                  f"cost {from_wei(int(rec.cost))} AGORA", job_id=rec.job_id)
        assert stage.spec is not None
        out_dir = Path(row.out_dir or rec.out_dir or "")
        rec.outputs, rec.metrics = await trio.to_thread.run_sync(split_outputs, out_dir, stage.spec, self.blobs,
                                                                 rec.result_hash)
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
    from marketplace.requester.sync import run_trio

    async def main() -> PipelineReport:
        return await run_pipeline(pipe, **kwargs)

    return run_trio(main)
