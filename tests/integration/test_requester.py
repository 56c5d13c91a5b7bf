"""The requester engine against a real anvil chain and real libp2p hosts.

The "fake provider" here is a test-side libp2p host that does what a provider node does on the wire (listen to
the job topic, send signed BidOffers, and for the happy path serve outputs and send a signed ResultMsg); the
requester under test is the real `Requester`. Nothing is mocked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

trio = pytest.importorskip("trio")
pytest.importorskip("libp2p")

from libp2p.crypto.secp256k1 import create_new_key_pair

from marketplace import protocol as P
from marketplace.blobs import BlobStore
from marketplace.devchain import rpc_call
from marketplace.eip712 import sign_result
from marketplace.market import Market
from marketplace.p2p import PeerRecord, open_host
from marketplace.requester import NoAcceptableBidsError, Requester, RequesterStore, resume_sync
from marketplace.results import ResultManifest, verify_result_dir, write_outputs
from marketplace.spec import parse_spec
from marketplace.tensors import dump_tensors
from marketplace.types import to_wei

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def make_spec(store: BlobStore, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    inputs = store.put_bytes(dump_tensors({"x": rng.standard_normal((4, 8)).astype(np.float32)}))
    return parse_spec({"version": 1, "kind": "inference", "data": {"inputs": inputs},
                       "model": {"arch": "mlp@1", "params": {"in_features": 8, "hidden": [4], "out_features": 2,
                                                            "activation": "relu"}},
                       "limits": {"wall_seconds": 30}})


@dataclass
class FakeProvider:
    """A provider on the wire: bids `price` on every announcement it sees; `forge_key` signs bids wrongly."""

    market: Market
    stack: Any
    price: float
    forge_key: str | None = None
    acks: list[Any] = field(default_factory=list)
    assigned: list[Any] = field(default_factory=list)
    outputs: dict[str, bytes] = field(default_factory=dict)
    result_dir: Path | None = None

    async def run(self, node: Any, topic: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sub = await node.gossip.subscribe(topic)
        task_status.started()
        async for msg in sub:
            ann = P.decode(msg.data, P.Announce, max_bytes=P.MAX_ANNOUNCE_BYTES)
            await self.bid(node, ann)

    async def bid(self, node: Any, ann: Any) -> None:
        s = self.stack
        signed = await trio.to_thread.run_sync(lambda: s.make_bid(
            self.market, bytes.fromhex(ann.spec_hash[2:]), self.price, 10, run_seconds=ann.run_seconds,
            signer_key=self.forge_key))
        record = PeerRecord.sign(self.market.client.account.key, node.peer_id, s.deployment.chain_id)
        offer = P.BidOffer(ann=ann.ann_id, bid=signed.to_json(), record=record.to_json(), eta_s=1.0)
        reply = await node.request(ann.requester_addrs[0], P.BID_PROTOCOL, offer.encode(), timeout=10)
        self.acks.append(P.decode(reply, P.Ack))

    def serve(self, node: Any) -> None:
        async def on_assign(payload: bytes, peer: Any) -> bytes:
            msg = P.decode(payload, P.Assigned)
            self.assigned.append((msg, peer))
            return P.Ack(ok=True).encode()

        async def on_blob(payload: bytes, peer: Any) -> bytes:
            req = P.decode(payload, P.BlobRequest)
            data = self.outputs.get(req.blob)
            if data is None:
                return P.blob_reply_err("unknown blob")
            return P.blob_reply_ok(len(data), data[req.offset:req.offset + req.length])

        node.serve(P.ASSIGN_PROTOCOL, on_assign)
        node.serve(P.BLOB_PROTOCOL, on_blob)


async def _run_submit(stack: Any, tmp: Path, providers: list[FakeProvider], *, k: int, max_price: float,
                      deliver: bool = False, vanish: bool = False) -> tuple[Any, Any, RequesterStore]:
    blobs = BlobStore(tmp / "blobs")
    spec = make_spec(blobs, seed=len(providers) * 10 + k)
    topic = P.job_topic(spec.kind, spec.device.type)
    store = RequesterStore(tmp / "requester.db")
    outcome: Any = None
    error: Any = None
    async with trio.open_nursery() as nursery:
        nodes = []
        for fp in providers:
            node = await nursery.start(_host)
            fp.serve(node)
            await nursery.start(fp.run, node, topic)
            nodes.append(node)
        async with Requester.open(stack.requester, store=store, blobs=blobs, key=create_new_key_pair(),
                                  bootstrap=[n.addr for n in nodes]) as req:
            try:
                if deliver and k == 1:
                    nursery.start_soon(_deliver, stack, providers[0], nodes[0], req)
                elif deliver:
                    for fp, node in zip(providers, nodes):
                        nursery.start_soon(_deliver_replica, stack, fp, node, req)
                if vanish:
                    nursery.start_soon(_vanish, stack, providers[0])
                outcome = await req.submit(spec, k=k, max_price=to_wei(max_price), bid_window=3,
                                           out_dir=tmp / "out", wait=deliver or vanish, peer_wait=5)
            except NoAcceptableBidsError as err:
                error = err
        nursery.cancel_scope.cancel()
    return outcome, error, store


async def _host(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_host(key=create_new_key_pair(), gossip=True) as node:
        task_status.started(node)
        await trio.sleep_forever()


def _outputs(fp: FakeProvider, spec_hash: str) -> tuple[str, list[Any]]:
    """Write the (fixed) outputs + manifest, keep them to serve, return (result hash, output refs)."""
    from marketplace.blobs import blob_id_of
    from marketplace.tensorhash import tensor_hash

    assert fp.result_dir is not None
    tensors = {"logits": np.ones((4, 2), dtype=np.float32)}
    outs = write_outputs(fp.result_dir, tensors)
    result = tensor_hash(tensors).hex
    ResultManifest(spec_hash=spec_hash, status="ok", result_hash=result, outputs=outs).write(fp.result_dir)
    refs = []
    for name in ("outputs.safetensors", "manifest.json"):
        data = (fp.result_dir / name).read_bytes()
        fp.outputs[blob_id_of(data)] = data
        refs.append(P.OutputRef(name=name, blob=blob_id_of(data), size=len(data)))
    return result, refs


async def _deliver_replica(stack: Any, fp: FakeProvider, node: Any, req: Requester) -> None:
    """k >= 2: commit (signed, relayed by the requester), wait for every commitment on chain, reveal."""
    import os

    from marketplace.eip712 import sign_commit
    from marketplace.types import commitment_for

    while not fp.assigned:
        await trio.sleep(0.05)
    msg, _ = fp.assigned[0]
    job_id = bytes.fromhex(msg.job_id[2:])
    view = await trio.to_thread.run_sync(fp.market.job, job_id)
    result, refs = _outputs(fp, "0x" + view.job.spec_hash.hex())
    salt = os.urandom(32)
    commitment = commitment_for(job_id, fp.market.address, bytes.fromhex(result[2:]), salt)
    _, _, v, r, s = sign_commit(fp.market.client.account, job_id, msg.index, commitment,
                                chain_id=stack.deployment.chain_id, market=stack.deployment.market)
    cm = P.CommitMsg(job_id=msg.job_id, index=msg.index, commitment="0x" + commitment.hex(), sig=P.Sig.of(v, r, s))
    ack = P.decode(await node.request(req.node.addr, P.RESULT_PROTOCOL, cm.encode()), P.Ack)
    assert ack.ok, ack.reason
    k = view.job.replicas
    while (await trio.to_thread.run_sync(fp.market.job, job_id)).committed_mask != (1 << k) - 1:
        await trio.sleep(0.1)
    rv = P.RevealMsg(job_id=msg.job_id, index=msg.index, result=result, salt="0x" + salt.hex(), outputs=refs)
    ack = P.decode(await node.request(req.node.addr, P.RESULT_PROTOCOL, rv.encode()), P.Ack)
    assert ack.ok, ack.reason


async def _vanish(stack: Any, fp: FakeProvider) -> None:
    """Once assigned, never deliver: move chain time past the deadline (and mine)."""
    while not fp.assigned:
        await trio.sleep(0.05)
    await trio.to_thread.run_sync(stack.travel, 3600)


async def _deliver(stack: Any, fp: FakeProvider, node: Any, req: Requester) -> None:
    """Once assigned: fetch the spec from the requester (as a node would), 'compute', serve and send a result."""
    while not fp.assigned:
        await trio.sleep(0.05)
    msg, requester_peer = fp.assigned[0]
    spec_hash = "0x" + (await trio.to_thread.run_sync(lambda: fp.market.job(bytes.fromhex(msg.job_id[2:])))
                        ).job.spec_hash.hex()
    breq = P.BlobRequest(job_id=msg.job_id, blob=f"spec:{spec_hash}", offset=0, length=P.BLOB_CHUNK)
    total, chunk = P.parse_blob_reply(await node.request(req.node.addr, P.BLOB_PROTOCOL, breq.encode()))
    assert total == len(chunk) and json.loads(chunk)["kind"] == "inference"
    assert fp.result_dir is not None
    outs = write_outputs(fp.result_dir, {"logits": np.ones((4, 2), dtype=np.float32)})
    from marketplace.tensorhash import tensor_hash

    result = tensor_hash({"logits": np.ones((4, 2), dtype=np.float32)}).hex
    ResultManifest(spec_hash=spec_hash, status="ok", result_hash=result, outputs=outs).write(fp.result_dir)
    refs = []
    from marketplace.blobs import blob_id_of

    for name in ("outputs.safetensors", "manifest.json"):
        data = (fp.result_dir / name).read_bytes()
        fp.outputs[blob_id_of(data)] = data
        refs.append(P.OutputRef(name=name, blob=blob_id_of(data), size=len(data)))
    job_id = bytes.fromhex(msg.job_id[2:])
    v, r, s = sign_result(fp.market.client.account, job_id, bytes.fromhex(result[2:]),
                          chain_id=stack.deployment.chain_id, market=stack.deployment.market)
    res = P.ResultMsg(job_id=msg.job_id, result=result, sig=P.Sig.of(v, r, s), outputs=refs)
    ack = P.decode(await node.request(req.node.addr, P.RESULT_PROTOCOL, res.encode()), P.Ack)
    assert ack.ok, ack.reason


def test_too_expensive_bids_open_nothing_and_move_no_tokens(stack: Any, tmp_path: Path) -> None:
    fps = [FakeProvider(stack.providers[0], stack, 2.5), FakeProvider(stack.providers[1], stack, 3.0)]
    before, block = stack.balances(), stack.w3.eth.block_number
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, fps, k=1, max_price=1.0))
    assert outcome is None and error is not None
    assert str(error) == "no acceptable bids: 2 bids, both ask more than max price 1 (2.5, 3)"
    assert all(not a.ok and "exceeds max price" in a.reason for fp in fps for a in fp.acks)
    assert stack.balances() == before and stack.w3.eth.block_number == block
    (row,) = store.jobs()
    assert row.state == "no-bids" and row.job_id is None
    assert sorted(b["status"] for b in store.bids(row.ann_id)) == ["refused", "refused"]


def test_bad_signature_is_refused_with_a_reason(stack: Any, tmp_path: Path) -> None:
    forger = FakeProvider(stack.providers[2], stack, 0.5, forge_key=stack.keys[8])
    before = stack.balances()
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, [forger], k=1, max_price=1.0))
    assert outcome is None and isinstance(error, NoAcceptableBidsError)
    (ack,) = forger.acks
    assert not ack.ok and "signed by" in ack.reason
    (line,) = error.explanation.bids
    assert line.refusal == "signature" and not line.chosen
    assert "carries a bad signature" in str(error)
    assert stack.balances() == before


def test_k1_job_end_to_end_with_a_wire_provider(stack: Any, tmp_path: Path) -> None:
    good = FakeProvider(stack.providers[3], stack, 0.75, result_dir=tmp_path / "provider")
    pricey = FakeProvider(stack.providers[4], stack, 0.9)
    before = stack.balances()
    # The next block is 5 minutes after the latest one (an idle chain): the job's deadline must still hold.
    rpc_call(stack.rpc_url, "evm_increaseTime", [300])
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, [good, pricey], k=1, max_price=1.0,
                                                         deliver=True))
    assert error is None and outcome.state == "settled", outcome and outcome.to_json()
    assert [w["provider"] for w in outcome.winners] == [stack.providers[3].address]
    assert good.assigned and good.assigned[0][0].index == 0
    out = tmp_path / "out"
    settlement = json.loads((out / "settlement.json").read_text())
    assert settlement["outcome"] == "completed" and settlement["outputsVerified"] is True
    assert set(settlement["gas"]) >= {"open", "accept"}
    assert (out / "outputs.safetensors").read_bytes() == (tmp_path / "provider" / "outputs.safetensors").read_bytes()
    diff = stack.diff(before, stack.balances())
    assert diff["token:requester"] + diff.get("mbal:requester", 0) == -to_wei(0.75)
    chosen = [b for b in outcome.explanation.bids if b.chosen]
    assert len(chosen) == 1 and chosen[0].reason.startswith("chosen: cheapest reputation-weighted")
    stack.assert_conserved()


def test_a_provider_that_vanishes_is_finalized_and_slashed_to_the_requester(stack: Any, tmp_path: Path) -> None:
    ghost = FakeProvider(stack.providers[5], stack, 0.5)
    before = stack.balances()
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, [ghost], k=1, max_price=1.0, vanish=True))
    assert error is None and outcome.state == "failed" and outcome.error == "job settled as expired"
    settlement = json.loads((tmp_path / "out" / "settlement.json").read_text())
    assert settlement["outcome"] == "expired" and settlement["outputsVerified"] is False
    assert set(settlement["gas"]) == {"open", "finalize"}
    diff = stack.diff(before, stack.balances())
    # escrow back plus the provider's 10-token collateral, credited to the requester's market balance
    assert diff["mbal:requester"] == to_wei(0.5) + to_wei(10)
    assert diff["stake:p5"] == -to_wei(10)
    (row,) = store.jobs()
    assert row.state == "failed" and row.job_id == outcome.job_id
    stack.assert_conserved()


def test_submit_without_wait_then_resume_finalizes_and_withdraws(stack: Any, tmp_path: Path) -> None:
    ghost = FakeProvider(stack.providers[0], stack, 0.25)
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, [ghost], k=1, max_price=1.0))
    assert error is None and outcome.state == "open" and ghost.assigned  # returned once opened and assigned
    assert store.job(outcome.job_id).state == "open"  # type: ignore[union-attr]
    stack.travel(3600)  # the requester process is gone; the provider never delivered
    before = stack.balances()
    result = resume_sync(stack.requester, store=store, blobs=BlobStore(tmp_path / "blobs"), key=create_new_key_pair(),
                         withdraw=True, timeout=60)
    assert result["jobs"][outcome.job_id]["outcome"] == "expired"
    assert store.job(outcome.job_id).state == "failed"  # type: ignore[union-attr]
    diff = stack.diff(before, stack.balances())
    assert diff["token:requester"] == before["mbal:requester"] + to_wei(0.25) + to_wei(10)
    assert stack.balances()["mbal:requester"] == 0 and int(result["withdrawn"]) == diff["token:requester"]
    assert store.jobs(unfinished=True) == []
    stack.assert_conserved()


def test_k2_commit_reveal_is_batched_by_the_requester(stack: Any, tmp_path: Path) -> None:
    fps = [FakeProvider(stack.providers[i], stack, 0.5, result_dir=tmp_path / f"p{i}") for i in (1, 2)]
    before = stack.balances()
    outcome, error, store = trio.run(lambda: _run_submit(stack, tmp_path, fps, k=2, max_price=1.0, deliver=True))
    assert error is None and outcome.state == "settled", outcome and outcome.to_json()
    settlement = outcome.settlement
    assert settlement["outcome"] == "completed" and settlement["paidMask"] == 0b11
    assert set(settlement["gas"]) == {"open", "commit_batch", "reveal_batch"}  # one tx each, none by providers
    assert verify_result_dir(tmp_path / "out").hex == settlement["result"]
    diff = stack.diff(before, stack.balances())
    assert diff["token:requester"] + diff.get("mbal:requester", 0) == -to_wei(1)
    assert all(c["posted"] for c in store.commits(outcome.job_id).values())
    stack.assert_conserved()


def _start_node(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[Any, dict[str, Any]]:
    import select
    import subprocess
    import time

    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env, cwd=cwd)
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if line.startswith("{"):
                return proc, json.loads(line)
    proc.kill()
    raise AssertionError(f"node never got ready:\n{log.read_text()[-3000:]}")


def test_cli_submit_k1_against_a_real_provider_node(stack: Any, tmp_path: Path) -> None:
    """`agora job submit --wait` (a process) buys a job from `agora node run` (another process).

    Last in the module: the node registers the outsider account as a provider, outside the stack's
    conservation bookkeeping."""
    pytest.importorskip("torch")  # the provider node runs the job
    import os
    import signal
    import subprocess
    import sys

    from marketplace import wallet
    from marketplace.devchain import DEV_ACCOUNTS

    root = Path(__file__).resolve().parents[2]
    stack.deployment.save(tmp_path / "deployments")
    phome, rhome = tmp_path / "provider", tmp_path / "requester"
    wallet.import_private_key("prov", DEV_ACCOUNTS[8][0], "pw", keystore_dir=phome / "keystores", iterations=1024)
    wallet.import_private_key("req", stack.keys[1], "pw", keystore_dir=rhome / "keystores", iterations=1024)
    (tmp_path / "node.yaml").write_text('kinds: [inference]\ndevice: cpu\nprices: {inference: "1"}\n'
                                        'collateral: "10"\nstake: "100"\nestimate_base_s: 5\nsettle_margin_s: 5\n')
    env = {k: v for k, v in os.environ.items() if k not in ("AGORA_ACCOUNT", "AGORA_BOOTSTRAP")}
    env.update(AGORA_PASSWORD="pw", PYTHONPATH=str(root))
    chain = ["--rpc", stack.rpc_url, "--deployments", str(tmp_path / "deployments")]
    node, ready = _start_node([sys.executable, "-m", "marketplace.cli", "node", "run", "--config",
                               str(tmp_path / "node.yaml"), *chain, "--json"], {**env, "AGORA_HOME": str(phome)},
                              tmp_path, tmp_path / "node.log")
    try:
        spec = make_spec(BlobStore(rhome / "blobs"), seed=99)
        (tmp_path / "spec.json").write_text(spec.canonical_json().decode())
        before = stack.balances()
        done = subprocess.run([sys.executable, "-m", "marketplace.cli", "job", "submit", str(tmp_path / "spec.json"),
                               "--replicas", "1", "--max-price", "2", "--wait", "--out", str(tmp_path / "out"),
                               "--bootstrap", ready["addrs"][0], "--bid-window", "5", *chain, "--json"],
                              capture_output=True, text=True, env={**env, "AGORA_HOME": str(rhome)}, cwd=tmp_path,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "node.log").read_text()[-2000:]
        outcome = json.loads(done.stdout)
        assert outcome["state"] == "settled" and outcome["settlement"]["outputs_verified"] is True
        assert [w["provider"] for w in outcome["winners"]] == [ready["address"]]
        diff = stack.diff(before, stack.balances())
        assert diff["token:requester"] + diff.get("mbal:requester", 0) == -to_wei(1)
        assert verify_result_dir(tmp_path / "out").hex == outcome["settlement"]["result"]
        listed = subprocess.run([sys.executable, "-m", "marketplace.cli", "job", "status", outcome["job_id"], *chain,
                                 "--json"], capture_output=True, text=True, env={**env, "AGORA_HOME": str(rhome)},
                                cwd=tmp_path, timeout=60)
        status = json.loads(listed.stdout)
        assert status["status"] == "settled:completed" and status["local"]["state"] == "settled"
        watched = subprocess.run([sys.executable, "-m", "marketplace.cli", "job", "watch", outcome["job_id"], *chain,
                                  "--timeout", "60", "--json"], capture_output=True, text=True,
                                 env={**env, "AGORA_HOME": str(rhome)}, cwd=tmp_path, timeout=90)
        assert json.loads(watched.stdout)["local"]["winners"][0]["provider"] == ready["address"]
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(10)
        if node.stdout is not None:
            node.stdout.close()
