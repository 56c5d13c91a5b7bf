"""Pipelines without a chain: parsing, references, order, every `validate` refusal with its exact message, the
state file, the budget rule and the output split. Blobs are tiny safetensors made here (no torch)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from marketplace.blobs import BlobStore
from marketplace.errors import SpecError
from marketplace.pipeline import (
    Budget,
    PipelineChangedError,
    PipelineError,
    PipelineState,
    find_cycle,
    fits_budget,
    load_pipeline,
    parse_pipeline,
    read_header,
    split_outputs,
    stage_outputs,
    validate,
)
from marketplace.pipeline.model import placeholder
from marketplace.results import ResultManifest, write_outputs
from marketplace.spec import parse_spec
from marketplace.tensors import dump_tensors, load_tensors
from marketplace.types import to_wei

MLP = {"in_features": 8, "hidden": [4], "out_features": 3}
ADDR = "0x" + "a" * 40


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def put(store: BlobStore, **tensors: np.ndarray) -> str:
    return store.put_bytes(dump_tensors(tensors))


@pytest.fixture
def data(store: BlobStore) -> dict[str, str]:
    """Blob ids: 10 samples of width 8, 10 labels, 7 labels, width-5 features, a [2, 10] order."""
    rng = np.random.default_rng(0)
    return {"x": put(store, x=rng.random((10, 8), dtype=np.float32)),
            "y": put(store, y=np.arange(10, dtype=np.int64) % 3),
            "y7": put(store, y=np.zeros(7, dtype=np.int64)),
            "x5": put(store, x=rng.random((10, 5), dtype=np.float32)),
            "order": put(store, order=np.tile(np.arange(10, dtype=np.int64), (2, 1)))}


def train(d: dict[str, str], **over: Any) -> dict[str, Any]:
    spec = {"kind": "train", "model": {"arch": "mlp@1", "params": dict(MLP)},
            "data": {"inputs": d["x"], "labels": d["y"]},
            "training": {"lr": 0.1, "batch_size": 4, "epochs": 2, "order": d["order"]}}
    return {"spec": spec, **over}


def evaluate(d: dict[str, str], weights: str = "${train.weights}", **over: Any) -> dict[str, Any]:
    return {"spec": {"kind": "evaluate", "model": {"arch": "mlp@1", "params": dict(MLP), "weights": weights},
                     "data": {"inputs": d["x"], "labels": d["y"]}}, **over}


def infer(d: dict[str, str], weights: str = "${train.weights}", **over: Any) -> dict[str, Any]:
    return {"spec": {"kind": "inference", "model": {"arch": "mlp@1", "params": dict(MLP), "weights": weights},
                     "data": {"inputs": d["x"]}}, **over}


def pipe(stages: dict[str, Any], budget: Any = 10, **top: Any) -> Any:
    return parse_pipeline({"version": 1, "name": "p", "budget": budget, "stages": stages, **top})


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_file_spec_override_defaults_and_refs(tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "eval.yaml").write_text(yaml.safe_dump(evaluate(data, weights=data["x"])["spec"]))
    doc = {"version": 1, "name": "demo", "budget": "7.5", "defaults": {"max_price": 2, "replicas": 2},
           "stages": {"train": train(data, max_price="1.5"),
                      "eval": {"spec": "specs/eval.yaml", "replicas": 1,
                               "override": {"model": {"weights": "${train.weights}"}, "determinism": None}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    p = load_pipeline(tmp_path / "p.yaml")
    assert p.name == "demo" and p.budget == to_wei("7.5")
    t, e = p.stages["train"], p.stages["eval"]
    assert (t.max_price, t.replicas) == (to_wei("1.5"), 2)  # own price, default replicas
    assert (e.max_price, e.replicas) == (to_wei(2), 1)  # default price, own replicas
    assert e.source == str(tmp_path / "specs" / "eval.yaml")
    assert [(r.stage, r.output, r.where) for r in e.refs] == [("train", "weights", "model.weights")]
    assert e.deps == ["train"] and t.deps == []
    assert e.spec is not None and e.spec.model.weights == placeholder("${train.weights}")
    assert "determinism" not in e.raw  # null deleted the key; the spec default applies
    assert stage_outputs(t) == ["weights"] and stage_outputs(e) == ["metrics"]
    resolved = e.resolve({"train": {"weights": data["y"]}})
    assert resolved.model.weights == data["y"] and resolved.data["inputs"] == data["x"]
    with pytest.raises(SpecError, match=r"stage eval: \$\{train.weights\} is not available yet"):
        e.resolve({})
    assert validate(p, store) == []


def test_bad_files_and_misplaced_references(store: BlobStore, data: dict[str, str]) -> None:
    with pytest.raises(PipelineError, match="stages"):
        parse_pipeline({"version": 1, "name": "p", "budget": 1, "stages": {}})
    with pytest.raises(PipelineError, match="colour: Extra inputs are not permitted"):
        parse_pipeline({"version": 1, "name": "p", "budget": 1, "stages": {"a": train(data)}, "colour": "red"})
    with pytest.raises(PipelineError, match="version 2 is not supported"):
        parse_pipeline({"version": 2, "name": "p", "budget": 1, "stages": {"a": train(data)}})
    bad = train(data)
    bad["spec"]["training"]["optimizer"] = "${a.weights}"
    odd = infer(data, weights="${train}")
    p = pipe({"train": bad, "odd": odd})
    assert validate(p, store) == [
        "stage train: training.optimizer: a reference may stand only where a blob id goes (model.weights, "
        "data.inputs, data.labels, training.order)",
        "stage odd: model.weights: '${train}' is not a reference; write ${stage.output}",
    ]


def test_invalid_stage_spec_is_reported_per_stage(store: BlobStore, data: dict[str, str]) -> None:
    s = train(data)
    del s["spec"]["training"]
    problems = validate(pipe({"train": s}), store)
    assert len(problems) == 1
    assert problems[0].startswith("stage train (inline): invalid spec: <root>: Value error, a train job needs a "
                                  "`training` section")


def test_topological_order_and_cycles(data: dict[str, str]) -> None:
    p = pipe({"eval": evaluate(data), "infer": infer(data), "train": train(data)}, budget=10)
    assert p.order() == ["train", "eval", "infer"]  # dependencies first, then file order
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


# ---------------------------------------------------------------------------------------------- refusals
def test_refuses_cycle(store: BlobStore, data: dict[str, str]) -> None:
    a = train(data)
    a["spec"]["model"]["weights"] = "${b.weights}"
    b = train(data)
    b["spec"]["model"]["weights"] = "${a.weights}"
    p = pipe({"a": a, "b": b})
    assert validate(p, store) == ["cycle: a -> b -> a"]
    with pytest.raises(PipelineError, match=r"^cycle: a -> b -> a$"):
        p.order()


def test_refuses_unknown_stage_and_unknown_output(store: BlobStore, data: dict[str, str]) -> None:
    p = pipe({"train": train(data), "eval": evaluate(data, weights="${trian.weights}"),
              "infer": infer(data, weights="${train.weight}")})
    assert validate(p, store) == [
        "stage eval: model.weights names unknown stage 'trian' (${trian.weights}); stages: train, eval, infer",
        "stage infer: model.weights names output 'weight' of stage train, which produces only weights "
        "(${train.weight})",
    ]


def test_refuses_output_in_the_wrong_slot(store: BlobStore, data: dict[str, str]) -> None:
    e = evaluate(data)
    e["spec"]["data"]["inputs"] = "${train.weights}"
    p = pipe({"train": train(data), "eval": e})
    assert validate(p, store) == [
        "stage eval: data.inputs cannot take ${train.weights} (a weights output); data.inputs takes a logits output"]


def test_refuses_missing_blob(tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    gone = "sha256:" + "e" * 64
    e = evaluate(data, weights=gone)
    problems = validate(pipe({"eval": e}), store)
    assert problems == [f"stage eval: model.weights: blob {gone} is not in the store {store.root}"]


def test_refuses_weights_of_another_architecture(store: BlobStore, data: dict[str, str]) -> None:
    e = evaluate(data)
    e["spec"]["model"]["params"] = {**MLP, "hidden": [5]}
    problems = validate(pipe({"train": train(data), "eval": e}), store)
    assert problems == [
        'stage eval: model.weights ${train.weights} are mlp@1 weights for {"activation": "relu", "hidden": [4], '
        '"in_features": 8, "out_features": 3}, but the stage declares mlp@1 {"activation": "relu", "hidden": [5], '
        '"in_features": 8, "out_features": 3}']


def test_refuses_shape_mismatches(store: BlobStore, data: dict[str, str]) -> None:
    t = train(data)
    t["spec"]["data"]["labels"] = data["y7"]
    e = evaluate(data)
    e["spec"]["data"]["inputs"] = data["x5"]
    problems = validate(pipe({"train": t, "eval": e}), store)
    x5 = data["x5"][:19] + "…"
    y7 = data["y7"][:19] + "…"
    assert problems == [
        f"stage train: data.labels ({y7}): y has 7 labels, data.inputs has 10 samples",
        f"stage eval: data.inputs ({x5}): x has shape [10, 5], but mlp@1 with in_features 8 takes [N, 8]",
    ]


def test_logits_feed_a_stage_only_with_its_in_features(store: BlobStore, data: dict[str, str]) -> None:
    """infer produces logits [10, 3] (stored as x); a second mlp takes them as inputs iff in_features == 3."""
    def head(width: int) -> dict[str, Any]:
        return {"spec": {"kind": "inference", "model": {"arch": "mlp@1", "params": {"in_features": width,
                                                                                    "out_features": 2}},
                         "data": {"inputs": "${infer.logits}"}}}

    ok = pipe({"train": train(data), "infer": infer(data), "head": head(3)})
    assert validate(ok, store) == []
    bad = pipe({"train": train(data), "infer": infer(data), "head": head(8)})
    assert validate(bad, store) == [
        "stage head: data.inputs (${infer.logits}): x has shape [10, 3], but mlp@1 with in_features 8 takes [N, 8]"]


def test_refuses_budget_overruns_per_stage_and_total(store: BlobStore, data: dict[str, str]) -> None:
    p = pipe({"train": train(data, max_price=3, replicas=2), "eval": evaluate(data, max_price=2)}, budget=5)
    assert validate(p, store) == [
        "stage train: max price 3 x 2 replica(s) = 6 AGORA exceeds the budget 5 AGORA",
        "budget: the stages may cost up to 8 AGORA (max price x replicas, summed), over the budget 5 AGORA",
    ]
    p = pipe({"train": train(data, max_price=3), "eval": evaluate(data, max_price=2.5)}, budget=5)
    assert validate(p, store) == [
        "budget: the stages may cost up to 5.5 AGORA (max price x replicas, summed), over the budget 5 AGORA"]


def test_validate_lists_every_problem_at_once(store: BlobStore, data: dict[str, str]) -> None:
    e = evaluate(data, weights="${nope.weights}", max_price=9)
    problems = validate(pipe({"train": train(data), "eval": e}, budget=5), store)
    assert len(problems) == 3 and problems[0].startswith("stage eval: model.weights names unknown stage 'nope'")


def test_examples_validate_against_the_example_store(tmp_path: Path) -> None:
    """The shipped pipelines parse, reference what they mean and fit their budgets (blobs not made here)."""
    root = Path(__file__).resolve().parents[2] / "examples" / "pipelines"
    for path in sorted(root.glob("*.yaml")):
        problems = validate(load_pipeline(path), BlobStore(tmp_path / "empty"))
        assert problems and all("is not in the store" in p for p in problems), (path, problems)
    mini = load_pipeline(root / "minilm-finetune-evaluate-infer.yaml")
    assert mini.order() == ["finetune", "evaluate", "infer"]
    assert mini.stages["finetune"].spec.model.params["train_encoder"] is False  # type: ignore[union-attr]


def test_read_header(store: BlobStore, data: dict[str, str]) -> None:
    assert read_header(store.path(data["x5"])) == {"x": ("F32", [10, 5])}
    junk = store.put_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ValueError):
        read_header(store.path(junk))


# ---------------------------------------------------------------------------------------------- state and budget
def test_state_round_trip_and_resume_checks(tmp_path: Path, data: dict[str, str]) -> None:
    p = pipe({"train": train(data), "eval": evaluate(data)})
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    rec = st.stages["train"]
    rec.status, rec.ann_id, rec.job_id, rec.cost = "done", "0x" + "1" * 64, "0x" + "2" * 64, str(to_wei(1))
    rec.outputs = {"weights": data["x"]}
    st.stages["eval"].attempts.append({"cost": str(to_wei("0.25"))})
    st.save()
    assert not list((tmp_path / "st").glob(".state.json.*"))  # the temporary file was renamed away
    back = PipelineState.load(tmp_path / "st")
    assert back.to_json() == st.to_json() and back.spent() == to_wei("1.25")
    # Same pipeline: resumes. A changed pending stage: allowed. A changed finished stage: refused.
    assert PipelineState.open(tmp_path / "st", p, ADDR).stages["train"].status == "done"
    changed_eval = pipe({"train": train(data), "eval": evaluate(data, replicas=2)})
    assert PipelineState.open(tmp_path / "st", changed_eval, ADDR).stages["eval"].status == "pending"
    t2 = train(data)
    t2["spec"]["training"]["lr"] = 0.2
    with pytest.raises(PipelineChangedError, match=r"changed stage\(s\) train \(done\)"):
        PipelineState.open(tmp_path / "st", pipe({"train": t2, "eval": evaluate(data)}), ADDR)
    with pytest.raises(PipelineChangedError, match="belongs to"):
        PipelineState.open(tmp_path / "st", p, "0x" + "b" * 40)
    # Price changes do not change what was computed.
    assert PipelineState.open(tmp_path / "st", pipe({"train": train(data, max_price=3), "eval": evaluate(data)}),
                              ADDR).stages["train"].status == "done"


def test_budget_reservation_rule(tmp_path: Path, data: dict[str, str]) -> None:
    assert fits_budget(10, 4, 3, 3) and not fits_budget(10, 4, 3, 4)
    st = PipelineState.open(tmp_path / "st", pipe({"train": train(data), "eval": evaluate(data)}), ADDR)
    b = Budget(cap=10, state=st)
    assert b.try_reserve("a", 6) and not b.try_reserve("b", 5) and b.try_reserve("b", 4)
    assert b.in_flight == 2
    b.release("a")
    st.stages["train"].cost = "3"  # a's job settled for less than it reserved
    assert b.try_reserve("c", 3) and not b.try_reserve("d", 1)  # 3 spent + 4 + 3 reserved = 10


# ---------------------------------------------------------------------------------------------- outputs
def _result(tmp: Path, tensors: dict[str, np.ndarray]) -> Path:
    from marketplace.tensorhash import tensor_hash

    outs = write_outputs(tmp, tensors)
    ResultManifest(spec_hash="0x" + "0" * 64, status="ok", result_hash=tensor_hash(tensors).hex,
                   outputs=outs).write(tmp)
    return tmp


def test_split_outputs_by_kind(tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    w = {"layers.0.weight": np.ones((4, 8), np.float32), "layers.0.bias": np.zeros(4, np.float32)}
    d = _result(tmp_path / "t", {**w, "loss_curve": np.array([2.0, 1.5], np.float32)})
    outs, metrics = split_outputs(d, parse_spec(train(data)["spec"]), store)
    assert sorted(load_tensors(store.get_bytes(outs["weights"]))) == sorted(w) and metrics == {"final_loss": 1.5}
    d = _result(tmp_path / "i", {"logits": np.full((10, 3), 0.5, np.float32)})
    spec = parse_spec({**infer(data, weights=data["x"])["spec"]})
    outs, _ = split_outputs(d, spec, store)
    assert read_header(store.path(outs["logits"])) == {"x": ("F32", [10, 3])}
    d = _result(tmp_path / "e", {"loss": np.array(0.5, np.float32), "accuracy": np.array(0.75, np.float32)})
    outs, metrics = split_outputs(d, parse_spec(evaluate(data, weights=data["x"])["spec"]), store)
    assert metrics == {"loss": 0.5, "accuracy": 0.75} and set(outs) == {"metrics"}
    (d / "outputs.safetensors").write_bytes(dump_tensors({"loss": np.array(9.0, np.float32)}))
    with pytest.raises(Exception, match="differs|missing"):  # tampered after verification: refused
        split_outputs(d, parse_spec(evaluate(data, weights=data["x"])["spec"]), store)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_validate_exit_codes_and_json(tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    from typer.testing import CliRunner

    import marketplace.cli.pipeline  # noqa: F401 - registers the group
    from marketplace.cli import app

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"version": 1, "name": "g", "budget": 5,
                                    "stages": {"train": train(data), "eval": evaluate(data)}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"version": 1, "name": "b", "budget": 1,
                                   "stages": {"train": train(data), "eval": evaluate(data, weights="${x.weights}")}}))
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline", "validate", str(good), "--store", str(store.root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["valid"] is True and doc["order"] == ["train", "eval"] and doc["max_cost"] == "2"
    assert doc["stages"][0]["max_price"] and doc["stages"][0]["stage_hash"]
    res = runner.invoke(app, ["pipeline", "validate", str(bad), "--store", str(store.root), "--json"])
    assert res.exit_code == 2
    doc = json.loads(res.stdout[res.stdout.find("{"):res.stdout.rfind("}") + 1])
    assert doc["valid"] is False and len(doc["problems"]) == 2
    assert doc["problems"][1].startswith("budget: the stages may cost up to 2 AGORA")


def test_cycle_message_follows_the_data_and_prepare_refuses(store: BlobStore, data: dict[str, str]) -> None:
    """a takes c's weights, b takes a's, c takes b's: data flows a -> b -> c -> a."""
    from marketplace.pipeline import PipelineInvalidError, prepare

    stages = {}
    for name, src in (("a", "c"), ("b", "a"), ("c", "b")):
        s = train(data)
        s["spec"]["model"]["weights"] = "${" + src + ".weights}"
        stages[name] = s
    p = pipe(stages)
    assert validate(p, store) == ["cycle: a -> b -> c -> a"]
    with pytest.raises(PipelineInvalidError) as err:
        prepare(p, store)
    assert err.value.problems == ["cycle: a -> b -> c -> a"] and err.value.exit_code == 2


# ---------------------------------------------------------------------------------------------- never paying twice
# The runner's retry decision (`plan_stage`) as a table, then `_Run` itself against a fake requester (a real
# RequesterStore, a dict for the chain): a failed stage whose job opened, or may have, is resumed, never bought
# again; a job that settled without a result is bought again with its real cost counted.
from types import SimpleNamespace  # noqa: E402

from marketplace.errors import RpcUnreachableError  # noqa: E402
from marketplace.pipeline.runner import _Run, cost_of, plan_stage  # noqa: E402
from marketplace.requester.store import RequesterStore  # noqa: E402
from marketplace.types import Outcome  # noqa: E402

ANN, JOB = "0x" + "a1" * 32, "0x" + "b2" * 32


def _row(state: str, job_id: str | None = None, error: str | None = None) -> Any:
    return SimpleNamespace(ann_id=ANN, job_id=job_id, state=state, error=error)


@pytest.mark.parametrize(("ann", "row", "outcome", "action"), [
    (None, None, None, "submit"),  # nothing announced yet
    (ANN, None, None, "hold"),  # the database cannot say whether it opened
    (ANN, _row("announced"), None, "submit"),  # the bid window died with the process
    (ANN, _row("no-bids"), None, "submit"),
    (ANN, _row("failed", error="open job: reverted"), None, "submit"),  # definite revert / proven never opened
    (ANN, _row("opening", error="openJob 0x.. is still pending"), None, "hold"),  # may still be mined
    (ANN, _row("open", JOB), None, "resume"),  # opened: watched again, whatever the stage's status says
    (ANN, _row("committed", JOB), None, "resume"),
    (ANN, _row("revealed", JOB), None, "resume"),
    (ANN, _row("settled", JOB), None, "finish"),  # paid and verified: only the bookkeeping is left
    (ANN, _row("failed", JOB), None, "resume"),  # a failed row whose job the chain shows unsettled
    (ANN, _row("failed", JOB), "completed", "refetch"),  # completed on chain: fetch the outputs, never re-buy
    (ANN, _row("failed", JOB), "expired", "submit"),  # settled without a result: bought again
    (ANN, _row("failed", JOB), "no_majority", "submit"),
])
def test_plan_stage_resubmits_only_jobs_that_never_opened_or_settled_without_result(
        ann: str | None, row: Any, outcome: str | None, action: str) -> None:
    plan = plan_stage(ann, row, outcome)
    assert plan.action == action, plan
    assert plan.reason


def test_cost_of_a_settled_job_is_prices_less_refund() -> None:
    winners = [{"price": str(to_wei(1))}, {"price": str(to_wei(1))}]
    assert cost_of({"refund": str(to_wei("0.5"))}, winners) == to_wei("1.5")
    assert cost_of({"refund": "0", "winners": [{"price": "7"}]}, winners) == 7  # the file's winners win
    assert cost_of({"refund": str(to_wei(3))}, winners) == 0


TRAIN_TENSORS = {"layers.0.weight": np.ones((4, 8), np.float32), "layers.0.bias": np.zeros(4, np.float32),
                 "layers.1.weight": np.ones((3, 4), np.float32), "layers.1.bias": np.zeros(3, np.float32),
                 "loss_curve": np.array([2.0, 1.0], np.float32)}


class FakeRequester:
    """What `_Run` uses of a `Requester`: store, market.job, recover_opened, submit, resume_job, wait. The
    chain is `jobs` (job id -> outcome, refund); `wait` settles a job as completed with real output files."""

    def __init__(self, tmp: Path, price: int) -> None:
        self.tmp, self.price = tmp, price
        self.store = RequesterStore(tmp / "requester.db")
        self.jobs: dict[str, dict[str, Any]] = {}
        self.submits = 0
        self.resume_errors: list[Exception] = []  # raised by resume_job, one per call, first
        self.recover: Callable[[Any], None] = lambda row: None
        self.market = SimpleNamespace(job=self._view)
        from marketplace.tensorhash import tensor_hash

        self.result = tensor_hash(TRAIN_TENSORS).hex

    def _view(self, job_id: str) -> Any:
        j = self.jobs[job_id.lower()]
        return SimpleNamespace(settled=j["outcome"] is not None, outcome=j["outcome"],
                               settlement={"result": bytes.fromhex(self.result[2:]), "refund": j["refund"],
                                           "paidMask": 1, "slashedMask": 0, "compensation": 0})

    def add(self, state: str, *, job: str | None = None, out_dir: Path | None = None,
            outcome: Outcome | None = None, refund: int = 0) -> str:
        """A requester row (and chain job) as an earlier process left it; returns its announcement id."""
        ann = "0x" + os.urandom(32).hex()
        self.store.add_job(ann_id=ann, announcement={}, spec_hash="0x" + "0" * 64, spec_path=None, k=1,
                           max_price=self.price, out_dir=str(out_dir) if out_dir else None)
        winners = [{"index": 0, "provider": ADDR, "peer": "p", "price": str(self.price), "collateral": "0"}]
        self.store.update_job(ann, state=state, job_id=job, winners=winners if job else [])
        if job:
            self.jobs[job] = {"outcome": outcome, "refund": refund, "ann": ann}
        return ann

    def recover_opened(self, row: Any) -> None:
        self.recover(row)

    async def submit(self, spec: Any, *, out_dir: Path, on_announced: Callable[[str], None], **_: Any) -> Any:
        self.submits += 1
        job = "0x" + os.urandom(32).hex()
        ann = self.add("open", job=job, out_dir=out_dir)
        on_announced(ann)
        row = self.store.job(ann)
        return SimpleNamespace(job_id=job, winners=row.winners)  # type: ignore[union-attr]

    async def resume_job(self, ann_id: str) -> Any:
        if self.resume_errors:
            raise self.resume_errors.pop(0)
        row = self.store.job(ann_id)
        return None if row is None or row.state in ("settled", "no-bids") else row

    async def wait(self, row: Any) -> dict[str, Any]:
        """The job completes: outputs in its folder, settlement.json, then the state (the engine's order)."""
        out = Path(row.out_dir)
        _result(out, TRAIN_TENSORS)
        self.jobs[row.job_id] = {**self.jobs[row.job_id], "outcome": Outcome.COMPLETED}
        doc = {"jobId": row.job_id, "outcome": "completed", "result": self.result, "winners": row.winners,
               "refund": "0", "outputsVerified": True}
        (out / "settlement.json").write_text(json.dumps(doc))
        self.store.update_job(row.ann_id, state="settled")
        return doc


def _run_once(p: Any, st: PipelineState, fake: FakeRequester, store: BlobStore) -> list[Any]:
    import trio

    events: list[Any] = []
    trio.run(_Run(p, st, fake, store, events.append).run)
    return events


def test_a_failed_stage_whose_job_is_open_is_resumed_not_bought_again(tmp_path: Path, store: BlobStore,
                                                                      data: dict[str, str]) -> None:
    """A transient RPC error after the job opened fails the stage; the next run waits for that same job."""
    p = pipe({"train": train(data)}, budget=1)
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    fake = FakeRequester(tmp_path, to_wei(1))
    fake.resume_errors.append(RpcUnreachableError("RPC stopped answering during job: ReadTimeout"))
    _run_once(p, st, fake, store)
    rec = st.stages["train"]
    assert fake.submits == 1 and rec.status == "failed" and "RPC stopped answering" in (rec.error or "")
    job = rec.job_id
    assert job and fake.store.job(job).state == "open"  # type: ignore[union-attr]
    st = PipelineState.open(tmp_path / "st", p, ADDR)  # a new run reads the state back
    events = _run_once(p, st, fake, store)
    rec = st.stages["train"]
    assert fake.submits == 1, "the open job was bought a second time"
    assert rec.status == "done" and rec.job_id == job and rec.attempts == []
    assert int(rec.cost) == to_wei(1) and st.spent() == to_wei(1)
    assert "resumed" in [e.event for e in events]


def test_a_job_that_may_still_open_holds_the_stage_and_its_budget(tmp_path: Path, store: BlobStore,
                                                                  data: dict[str, str]) -> None:
    """A stage whose openJob has no receipt is neither bought again nor released: a second stage that fits the
    budget only without it is refused. Once the job is found, the stage resumes it."""
    p = pipe({"a": train(data), "b": train(data, max_price="0.5")}, budget="1.4")
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    fake = FakeRequester(tmp_path, to_wei(1))
    rec = st.stages["a"]
    rec.status, rec.ann_id, rec.error = "failed", fake.add("opening"), "openJob has no receipt"
    fake.recover = lambda row: fake.store.update_job(row.ann_id, error="openJob 0x.. is still pending")
    _run_once(p, st, fake, store)
    assert fake.submits == 0
    assert rec.status == "failed" and "may still be mined" in (rec.error or "") and "still pending" in rec.error
    assert st.stages["b"].status == "failed" and (st.stages["b"].error or "").startswith("budget:")
    assert "held 1 (jobs that may still cost)" in st.stages["b"].error
    job = "0x" + "c3" * 32

    def adopt(row: Any) -> None:  # the chain now shows the job: recover_opened records it
        fake.store.update_job(row.ann_id, state="open", job_id=job,
                              winners=[{"index": 0, "provider": ADDR, "peer": "p", "price": str(to_wei(1)),
                                        "collateral": "0"}], out_dir=str(tmp_path / "adopted"))
        fake.jobs[job] = {"outcome": None, "refund": 0}

    fake.recover = adopt
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    _run_once(p, st, fake, store)
    assert fake.submits == 0 and st.stages["a"].status == "done" and st.stages["a"].job_id == job


def test_a_job_that_settled_without_result_is_bought_again_with_its_cost_counted(
        tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    """No settlement.json (a crash lost it): the cost comes from the chain, counts in `spent`, then a new job."""
    p = pipe({"train": train(data)}, budget=3)
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    fake = FakeRequester(tmp_path, to_wei(1))
    old = "0x" + "d4" * 32
    rec = st.stages["train"]
    rec.status, rec.error = "failed", "RPC stopped answering"
    rec.ann_id = fake.add("failed", job=old, out_dir=tmp_path / "old", outcome=Outcome.NO_MAJORITY,
                          refund=to_wei("0.25"))
    _run_once(p, st, fake, store)
    assert fake.submits == 1 and rec.status == "done" and rec.job_id != old
    assert [(a["job_id"], int(a["cost"])) for a in rec.attempts] == [(old, to_wei("0.75"))]
    assert st.spent() == to_wei("1.75")
    rebuilt = json.loads((tmp_path / "old" / "settlement.json").read_text())
    assert rebuilt["outcome"] == "no_majority" and rebuilt["rebuilt"]


def test_a_settled_job_whose_settlement_file_is_missing_is_finished_from_the_chain(
        tmp_path: Path, store: BlobStore, data: dict[str, str]) -> None:
    p = pipe({"train": train(data)}, budget=1)
    st = PipelineState.open(tmp_path / "st", p, ADDR)
    fake = FakeRequester(tmp_path, to_wei(1))
    job, out = "0x" + "e5" * 32, tmp_path / "out"
    _result(out, TRAIN_TENSORS)  # outputs verified and moved in; settlement.json never written
    rec = st.stages["train"]
    rec.status, rec.ann_id, rec.job_id = "open", fake.add("settled", job=job, out_dir=out,
                                                          outcome=Outcome.COMPLETED), job
    _run_once(p, st, fake, store)
    assert fake.submits == 0 and rec.status == "done" and int(rec.cost) == to_wei(1)
    assert sorted(load_tensors(store.get_bytes(rec.outputs["weights"]))) == sorted(
        k for k in TRAIN_TENSORS if k != "loss_curve")
    assert json.loads((out / "settlement.json").read_text())["result"] == fake.result
