"""`agora node run` as a real process against a real anvil chain, talked to by a real libp2p host in the test.

The module deploys a fresh market on the session anvil, imports a dev key into a keystore under a temporary
AGORA_HOME and starts the node once (it registers itself). The test host plays the requester: it publishes
announcements (junk, unsigned, stale, unfunded, valid), takes the node's signed bid, opens the job on chain,
serves the spec and inputs, gets the signed result, fetches and checks the outputs and accepts the result.
The last test stops the node with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
trio = pytest.importorskip("trio")

from eth_account import Account  # noqa: E402

from marketplace import wallet  # noqa: E402
from marketplace.client import ChainClient, connect  # noqa: E402
from marketplace.deployer import deploy  # noqa: E402
from marketplace.devchain import DEV_ACCOUNTS  # noqa: E402
from marketplace.devstack import log_tail, metric, read_ready  # noqa: E402
from marketplace.eip712 import recover_bid_signer  # noqa: E402
from marketplace.market import Market  # noqa: E402
from marketplace.p2p import PeerRecord, load_or_create_key, open_host, verify_peer_record  # noqa: E402
from marketplace.protocol import (  # noqa: E402
    ASSIGN_PROTOCOL,
    BID_PROTOCOL,
    BLOB_CHUNK,
    BLOB_PROTOCOL,
    RESULT_PROTOCOL,
    Ack,
    Announce,
    Assigned,
    BidOffer,
    BlobRequest,
    CommitMsg,
    ResultMsg,
    RevealMsg,
    blob_reply_err,
    blob_reply_ok,
    decode,
    job_topic,
    parse_blob_reply,
)
from marketplace.results import verify_result_dir  # noqa: E402
from marketplace.spec import parse_spec  # noqa: E402
from marketplace.tensors import dump_tensors  # noqa: E402
from marketplace.types import JobParams, SignedBid, to_wei  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
REQUESTER_KEY = DEV_ACCOUNTS[1][0]
PROVIDER_KEY = DEV_ACCOUNTS[3][0]
PAUPER_KEY = DEV_ACCOUNTS[9][0]
TOPIC = job_topic("inference", "cpu")
PASSWORD = "node-test-password"


@dataclass
class Node:
    """The node process (restartable on the same AGORA_HOME) and the requester's view of the chain."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    market: Market  # the requester's view
    provider: str
    home: Path
    stderr: Path
    rpc: str
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        with open(self.stderr, "a") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=self.env, cwd=self.cwd)
        try:
            self.ready = read_ready(self.proc, 240)
        except RuntimeError as exc:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"node {exc}\n{self.log_tail()}") from None

    def stop(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.ready["ops"] + path, timeout=10) as resp:
            return resp.read()

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.get("/jobs")))

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        return metric(self.ready["ops"], name, **labels)

    def log_tail(self) -> str:
        return log_tail(self.stderr)


@pytest.fixture(scope="module")
def node(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("agent")
    w3 = connect(anvil.rpc_url)
    accounts = [Account.from_key(k) for k, _ in DEV_ACCOUNTS]
    deployment = deploy(w3, accounts[0], fund=[a.address for a in accounts[1:9]])
    deployment.save(tmp / "deployments")
    requester = Market(ChainClient(w3, deployment, account=accounts[1]))
    requester.approve(deployment.market, to_wei(1000))

    home = tmp / "home"
    wallet.import_private_key("prov", PROVIDER_KEY, PASSWORD, keystore_dir=home / "keystores", iterations=1024)
    config = tmp / "node.yaml"
    config.write_text("kinds: [inference]\ndevice: cpu\nprices: {inference: \"1\"}\ncollateral: \"10\"\n"
                      "stake: \"100\"\nestimate_base_s: 5\nsettle_margin_s: 5\n")
    env = {**os.environ, "AGORA_HOME": str(home), "AGORA_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}
    env.pop("AGORA_ACCOUNT", None)
    env.pop("AGORA_BOOTSTRAP", None)
    argv = [sys.executable, "-m", "marketplace.cli", "node", "run", "--config", str(config), "--rpc",
            anvil.rpc_url, "--deployments", str(tmp / "deployments"), "--log-format", "json", "--json"]
    n = Node(argv=argv, env=env, cwd=tmp, market=requester, provider=accounts[3].address, home=home,
             stderr=tmp / "node.log", rpc=anvil.rpc_url)
    n.start()
    try:
        yield n
    finally:
        n.stop(signal.SIGKILL)
        if n.proc is not None and n.proc.stdout is not None:
            n.proc.stdout.close()


def make_announce(node: Node, host: Any, *, spec_hash: str, key: str = REQUESTER_KEY, sign: bool = True,
                  age_ms: int = 0, max_price: int = to_wei(2), replicas: int = 1) -> bytes:
    now = int(time.time() * 1000) - age_ms
    ann = Announce(chain_id=31337, market=node.market.client.deployment.market, requester=Account.from_key(key).address,
                   requester_peer=str(host.peer_id), requester_addrs=host.addrs, spec_hash=spec_hash, kind="inference",
                   device="cpu", replicas=replicas, max_price=str(max_price), min_collateral="0", run_seconds=600,
                   window=60, input_bytes=2048, ts_ms=now, bid_until_ms=now + 20_000, nonce="0x" + os.urandom(16).hex())
    return (ann.signed(key) if sign else ann).encode()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.2)
        return
    raise AssertionError(f"timed out waiting for {what}")


def test_ready_line_and_health(node: Node) -> None:
    ready = node.ready
    assert ready["event"] == "ready" and ready["address"] == node.provider
    assert TOPIC in ready["topics"] and all(f"/p2p/{ready['peer_id']}" in a for a in ready["addrs"])
    health = json.loads(node.get("/health"))
    assert health["ok"] is True and health["address"] == node.provider and health["peer_id"] == ready["peer_id"]
    assert health["block"] > 0
    # It registered itself with the configured stake, and its identity key sits beside the keystores.
    info = node.market.provider_info(node.provider)
    assert info["registered"] and info["stake"] == to_wei(100)
    assert (node.home / "keystores" / f"{node.provider}.p2p.key").is_file()
    assert json.loads(node.get("/jobs")) == []


def test_bad_announcements_are_dropped_and_counted_and_a_valid_one_gets_a_signed_bid(node: Node, tmp_path: Path
                                                                                    ) -> None:
    offers: list[tuple[BidOffer, str]] = []

    async def main() -> None:
        async with open_host(key=load_or_create_key(tmp_path / "req.key"), gossip=True) as host:
            async def on_bid(payload: bytes, peer: Any) -> bytes:
                offers.append((decode(payload, BidOffer), str(peer)))
                return Ack(ok=True).encode()

            host.serve(BID_PROTOCOL, on_bid)
            await host.connect(node.ready["addrs"][0])
            assert await host.gossip.wait_for_topic_peers(TOPIC, 1, timeout=20)
            spec = "0x" + os.urandom(32).hex()
            await host.gossip.publish(TOPIC, b"{not json")
            await host.gossip.publish(TOPIC, make_announce(node, host, spec_hash=spec, sign=False))
            await host.gossip.publish(TOPIC, make_announce(node, host, spec_hash=spec, age_ms=120_000))
            await host.gossip.publish(TOPIC, make_announce(node, host, spec_hash=spec, key=PAUPER_KEY))
            await wait_for(lambda: node.metric("agora_messages_rejected_total", reason="funds") >= 1, 30,
                           "the unfunded announcement to be rejected")
            await host.gossip.publish(TOPIC, make_announce(node, host, spec_hash=spec))
            await wait_for(lambda: bool(offers), 30, "a bid")

    trio.run(main)
    for reason in ("malformed", "unsigned", "stale", "funds"):
        assert node.metric("agora_messages_rejected_total", reason=reason) >= 1, reason
    assert node.proc is not None and node.proc.poll() is None  # still running

    offer, peer = offers[0]
    signed = SignedBid.from_json(offer.bid)
    dep = node.market.client.deployment
    assert recover_bid_signer(signed, chain_id=31337, market=dep.market) == node.provider
    assert verify_peer_record(PeerRecord.from_json(offer.record), peer, chain_id=31337) == node.provider
    assert peer == node.ready["peer_id"]
    bid = signed.bid
    assert (bid.price, bid.collateral, bid.requester) == (to_wei(1), to_wei(10), node.market.address)
    chain_now = node.market.client.timestamp()
    assert chain_now < bid.expiry <= chain_now + 130 and bid.max_deadline >= chain_now + 600


def tiny_spec(store_dir: Path) -> tuple[Any, dict[str, bytes]]:
    x = np.random.default_rng(7).standard_normal((16, 8)).astype(np.float32)
    blob = dump_tensors({"x": x})
    from marketplace.blobs import blob_id_of

    spec = parse_spec({"kind": "inference", "model": {"arch": "mlp@1", "params": {
        "in_features": 8, "hidden": [16], "out_features": 3, "activation": "relu"}},
        "data": {"inputs": blob_id_of(blob)}})
    return spec, {blob_id_of(blob): blob}


class Requester:
    """The test's requester: a libp2p host serving bids, blobs and results, and the requester's Market."""

    def __init__(self, host: Any, node: Node, blobs: dict[str, bytes]) -> None:
        self.host, self.node, self.blobs = host, node, blobs
        self.offers: list[BidOffer] = []
        self.messages: list[Any] = []

    async def setup(self) -> None:
        async def on_bid(payload: bytes, peer: Any) -> bytes:
            self.offers.append(decode(payload, BidOffer))
            return Ack(ok=True).encode()

        async def on_blob(payload: bytes, peer: Any) -> bytes:
            req = decode(payload, BlobRequest)
            data = self.blobs.get(req.blob)
            if data is None:
                return blob_reply_err("unknown blob")
            return blob_reply_ok(len(data), data[req.offset:req.offset + req.length])

        async def on_result(payload: bytes, peer: Any) -> bytes:
            self.messages.append(decode(payload, (ResultMsg, CommitMsg, RevealMsg)))
            return Ack(ok=True).encode()

        self.host.serve(BID_PROTOCOL, on_bid)
        self.host.serve(BLOB_PROTOCOL, on_blob)
        self.host.serve(RESULT_PROTOCOL, on_result)
        await self.connect()

    async def connect(self) -> None:
        await self.host.connect(self.node.ready["addrs"][0])
        assert await self.host.gossip.wait_for_topic_peers(TOPIC, 1, timeout=20)

    async def bid_for(self, spec_hash: str, replicas: int = 1) -> tuple[str, SignedBid]:
        """Announce, wait for the node's bid; returns (announcement id, signed bid)."""
        count = len(self.offers)
        ann = make_announce(self.node, self.host, spec_hash=spec_hash, replicas=replicas)
        await self.host.gossip.publish(TOPIC, ann)
        await wait_for(lambda: len(self.offers) > count, 30, "a bid")
        return decode(ann, Announce).ann_id, SignedBid.from_json(self.offers[-1].bid)

    async def message(self, kind: type, timeout: float = 180) -> Any:
        await wait_for(lambda: any(isinstance(m, kind) for m in self.messages), timeout, kind.__name__)
        return next(m for m in self.messages if isinstance(m, kind))

    async def fetch_outputs(self, job_id: str, outputs: Any, out: Path) -> None:
        out.mkdir(exist_ok=True)
        for ref in outputs:
            buf = b""
            while True:
                req = BlobRequest(job_id=job_id, blob=ref.blob, offset=len(buf), length=BLOB_CHUNK)
                total, chunk = parse_blob_reply(await self.host.request(self.node.ready["addrs"][0], BLOB_PROTOCOL,
                                                                        req.encode(), timeout=10))
                buf += chunk
                if len(buf) >= total:
                    break
            (out / ref.name).write_bytes(buf)


def open_job(node: Node, spec: Any, bids: list[SignedBid]) -> tuple[bytes, Any]:
    now = node.market.client.timestamp()
    params = JobParams(spec_hash=spec.spec_hash(), salt=os.urandom(32), deadline=now + 600, window=60,
                       replicas=len(bids))
    return node.market.open_job(params, bids)


def job_row(node: Node, job_id: str) -> dict[str, Any] | None:
    return next((j for j in node.jobs() if j["job_id"] == job_id), None)


def spec_blobs(tmp_path: Path) -> tuple[Any, dict[str, bytes]]:
    spec, blobs = tiny_spec(tmp_path)
    blobs[f"spec:0x{spec.spec_hash().hex()}"] = spec.canonical_json()
    return spec, blobs


@pytest.mark.parametrize("tell", [True, False], ids=["assigned-message", "assignment-seen-on-chain"])
def test_a_won_job_is_run_and_paid(node: Node, tmp_path: Path, tell: bool) -> None:
    """The whole k = 1 flow with the test as requester: bid, openJob, Assigned (or only the chain event, as if
    the message was lost), blobs, ResultMsg, outputs, acceptSignedResult; the node records the earnings."""
    spec, blobs = spec_blobs(tmp_path)
    earned = node.metric("agora_earnings_wei_total")
    out = tmp_path / "out"
    state: dict[str, Any] = {}

    async def main() -> None:
        async with open_host(key=load_or_create_key(tmp_path / "req.key"), gossip=True) as host:
            req = Requester(host, node, blobs)
            await req.setup()
            ann_id, signed = await req.bid_for("0x" + spec.spec_hash().hex())
            job_id, tx = await trio.to_thread.run_sync(open_job, node, spec, [signed])
            state["job_id"] = "0x" + job_id.hex()
            if tell:
                assigned = Assigned(ann=ann_id, job_id=state["job_id"], index=0, block=tx.block, tx=tx.tx_hash)
                reply = await host.request(node.ready["addrs"][0], ASSIGN_PROTOCOL, assigned.encode(), timeout=10)
                ack = decode(reply, Ack)
                assert ack.ok, ack.reason
            res = await req.message(ResultMsg)
            state["result"] = res.result
            assert res.job_id == state["job_id"]
            await req.fetch_outputs(res.job_id, res.outputs, out)
            await trio.to_thread.run_sync(node.market.accept_signed_result, job_id, bytes.fromhex(res.result[2:]),
                                          res.sig.as_tuple())
            await wait_for(lambda: (job_row(node, state["job_id"]) or {}).get("state") == "settled", 30,
                           "the node to record the settlement")

    trio.run(main)
    assert "0x" + verify_result_dir(out).root.hex() == state["result"]
    job = job_row(node, state["job_id"])
    assert job is not None and job["earnings"] == str(to_wei(1)) and job["outcome"] == "completed:paid"
    assert node.metric("agora_earnings_wei_total") == earned + float(to_wei(1))
    assert node.market.market_balance(node.provider) >= to_wei(1)  # paid into the market balance


def test_replicated_job_survives_a_sigkill_between_commit_and_reveal(node: Node, tmp_path: Path) -> None:
    """k = 2 with the node as worker 0 and a second provider played by the test. The node is SIGKILLed right
    after its commitment left; restarted, it still reveals (salt and result were stored first) and is paid."""
    from marketplace.blobs import BlobStore
    from marketplace.eip712 import sign_bid
    from marketplace.types import Bid, commitment_for
    from node.sandbox import run_in_process

    spec, blobs = spec_blobs(tmp_path)
    store = BlobStore(tmp_path / "store")
    for blob_id, data in blobs.items():
        if blob_id.startswith("sha256:"):
            store.put_bytes(data)
    mine = run_in_process(spec, store, tmp_path / "mine")  # the second provider's honest result
    assert mine.result_hash
    other_key = DEV_ACCOUNTS[4][0]
    other = Market(node.market.client.with_account(Account.from_key(other_key)))
    if not other.provider_info(other.address)["registered"]:
        other.approve(other.client.deployment.registry, to_wei(100))
        other.register(to_wei(100), b"\x00" * 8, b"\x00" * 32)
    state: dict[str, Any] = {}

    async def main() -> None:
        async with open_host(key=load_or_create_key(tmp_path / "req.key"), gossip=True) as host:
            req = Requester(host, node, blobs)
            await req.setup()
            _, signed = await req.bid_for("0x" + spec.spec_hash().hex(), replicas=2)
            now = await trio.to_thread.run_sync(node.market.client.timestamp)
            theirs = sign_bid(other.client.account, Bid(
                spec_hash=spec.spec_hash(), requester=node.market.address, provider=other.address, price=to_wei(1),
                collateral=to_wei(10), run_seconds=5, expiry=now + 600, nonce=int.from_bytes(os.urandom(32), "big")),
                chain_id=31337, market=other.client.deployment.market)
            job_id, _ = await trio.to_thread.run_sync(open_job, node, spec, [signed, theirs])
            state["job_id"] = "0x" + job_id.hex()  # no Assigned message: the node finds it on chain
            commit = await req.message(CommitMsg)
            assert (commit.job_id, commit.index) == (state["job_id"], 0)

            await trio.to_thread.run_sync(node.stop, signal.SIGKILL)
            stored = job_row_offline(node, state["job_id"])  # the salt was on disk before the commitment left
            assert stored["state"] in ("computed", "committed") and stored["salt"] and stored["result"]
            assert commitment_for(job_id, node.provider, bytes.fromhex(stored["result"][2:]),
                                  bytes.fromhex(stored["salt"][2:])) == bytes.fromhex(commit.commitment[2:])
            await trio.to_thread.run_sync(node.start)  # same identity, new port: it dials us to reveal

            salt = os.urandom(32)
            result = bytes.fromhex(mine.result_hash[2:])  # type: ignore[index]
            signed_commit = (0, bytes.fromhex(commit.commitment[2:]), *commit.sig.as_tuple())
            await trio.to_thread.run_sync(node.market.commit_batch, job_id, [signed_commit])
            await trio.to_thread.run_sync(other.commit, job_id, 1, commitment_for(job_id, other.address, result, salt))
            reveal = await req.message(RevealMsg, timeout=60)
            assert commitment_for(job_id, node.provider, bytes.fromhex(reveal.result[2:]),
                                  bytes.fromhex(reveal.salt[2:])) == bytes.fromhex(commit.commitment[2:])
            assert reveal.result == mine.result_hash
            await trio.to_thread.run_sync(node.market.reveal_batch, job_id, [
                (0, bytes.fromhex(reveal.result[2:]), bytes.fromhex(reveal.salt[2:])), (1, result, salt)])
            await wait_for(lambda: (job_row(node, state["job_id"]) or {}).get("state") == "settled", 30,
                           "the restarted node to record the settlement")

    trio.run(main)
    job = job_row(node, state["job_id"])
    assert job is not None and job["outcome"] == "completed:paid" and job["earnings"] == str(to_wei(1))
    assert node.market.job(bytes.fromhex(state["job_id"][2:])).settled


def test_k1_fallback_submits_and_finalizes_by_chain_time(node: Node, tmp_path: Path) -> None:
    """A requester that takes the signed result but never pays: at deadline - margin (chain time, moved with
    evm_increaseTime) the node submits the result itself, and finalizes once the challenge window is over."""
    from marketplace.devchain import time_travel

    spec, blobs = spec_blobs(tmp_path)
    state: dict[str, Any] = {}

    async def main() -> None:
        async with open_host(key=load_or_create_key(tmp_path / "req.key"), gossip=True) as host:
            req = Requester(host, node, blobs)
            await req.setup()
            _, signed = await req.bid_for("0x" + spec.spec_hash().hex())
            job_id, _ = await trio.to_thread.run_sync(open_job, node, spec, [signed])
            state["job_id"] = "0x" + job_id.hex()
            await req.message(ResultMsg)
            view = await trio.to_thread.run_sync(node.market.job, job_id)
            now = await trio.to_thread.run_sync(node.market.client.timestamp)
            assert view.job is not None and view.job.phase.name == "ASSIGNED"
            await trio.to_thread.run_sync(time_travel, node.rpc, view.job.deadline - 4 - now)
            await wait_for(lambda: (job_row(node, state["job_id"]) or {}).get("state") == "submitted", 30,
                           "the node to submit its result")
            submitted = await trio.to_thread.run_sync(node.market.job, job_id)
            assert submitted.job is not None and submitted.job.phase.name == "SUBMITTED"
            now = await trio.to_thread.run_sync(node.market.client.timestamp)
            await trio.to_thread.run_sync(time_travel, node.rpc, submitted.job.challenge_end - now + 1)
            await wait_for(lambda: (job_row(node, state["job_id"]) or {}).get("state") == "settled", 30,
                           "the node to finalize")

    trio.run(main)
    job = job_row(node, state["job_id"])
    assert job is not None and job["outcome"] == "completed:paid" and job["earnings"] == str(to_wei(1))


def second_provider(node: Node, spec: Any, tmp_path: Path) -> tuple[Market, bytes]:
    """Dev account 4 as another registered provider, with its honest result of `spec` (computed here)."""
    from marketplace.blobs import BlobStore
    from node.sandbox import run_in_process

    store = BlobStore(tmp_path / "store")
    for blob_id, data in spec_blobs(tmp_path)[1].items():
        if blob_id.startswith("sha256:"):
            store.put_bytes(data)
    mine = run_in_process(spec, store, tmp_path / "mine")
    assert mine.result_hash
    other = Market(node.market.client.with_account(Account.from_key(DEV_ACCOUNTS[4][0])))
    if not other.provider_info(other.address)["registered"]:
        other.approve(other.client.deployment.registry, to_wei(100))
        other.register(to_wei(100), b"\x00" * 8, b"\x00" * 32)
    return other, bytes.fromhex(mine.result_hash[2:])


def other_bid(node: Node, other: Market, spec: Any) -> SignedBid:
    from marketplace.eip712 import sign_bid
    from marketplace.types import Bid

    now = node.market.client.timestamp()
    return sign_bid(other.client.account, Bid(
        spec_hash=spec.spec_hash(), requester=node.market.address, provider=other.address, price=to_wei(1),
        collateral=to_wei(10), run_seconds=5, expiry=now + 600, nonce=int.from_bytes(os.urandom(32), "big")),
        chain_id=31337, market=other.client.deployment.market)


def test_k2_fallbacks_commit_and_reveal_by_chain_time(node: Node, tmp_path: Path) -> None:
    """A requester that never posts the batches: the node commits itself at deadline - margin and reveals
    itself at deadline + window - margin (chain time), and is paid by the majority."""
    from marketplace.devchain import time_travel
    from marketplace.types import commitment_for

    spec, blobs = spec_blobs(tmp_path)
    other, result = second_provider(node, spec, tmp_path)
    state: dict[str, Any] = {}

    async def chain_view(job_id: bytes) -> Any:
        return await trio.to_thread.run_sync(node.market.job, job_id)

    async def travel_to(timestamp: int) -> None:
        now = await trio.to_thread.run_sync(node.market.client.timestamp)
        await trio.to_thread.run_sync(time_travel, node.rpc, max(timestamp - now, 0))

    async def main() -> None:
        async with open_host(key=load_or_create_key(tmp_path / "req.key"), gossip=True) as host:
            req = Requester(host, node, blobs)
            await req.setup()
            _, signed = await req.bid_for("0x" + spec.spec_hash().hex(), replicas=2)
            theirs = await trio.to_thread.run_sync(other_bid, node, other, spec)
            job_id, _ = await trio.to_thread.run_sync(open_job, node, spec, [signed, theirs])
            state["job_id"] = "0x" + job_id.hex()
            await req.message(CommitMsg)
            salt = os.urandom(32)
            await trio.to_thread.run_sync(other.commit, job_id, 1, commitment_for(job_id, other.address, result, salt))
            view = await chain_view(job_id)
            assert view.committed_mask == 0b10 and view.job is not None
            deadline, window = view.job.deadline, view.job.window
            await travel_to(deadline - 4)

            async def committed() -> bool:
                return (await chain_view(job_id)).committed_mask == 0b11

            with trio.fail_after(30):
                while not await committed():
                    await trio.sleep(0.2)
            await req.message(RevealMsg, timeout=30)  # everyone committed: the opening is offered first
            await travel_to(deadline + window - 4)
            with trio.fail_after(30):
                while not (await chain_view(job_id)).revealed_mask & 1:
                    await trio.sleep(0.2)
            await trio.to_thread.run_sync(other.reveal, job_id, 1, result, salt)
            await wait_for(lambda: (job_row(node, state["job_id"]) or {}).get("state") == "settled", 30,
                           "the node to record the settlement")

    trio.run(main)
    job = job_row(node, state["job_id"])
    assert job is not None and job["outcome"] == "completed:paid" and job["earnings"] == str(to_wei(1))


def job_row_offline(node: Node, job_id: str) -> dict[str, Any]:
    """Read the stopped node's database directly (what a restart will resume from)."""
    from node.agent.store import NodeStore

    row = NodeStore(node.home / "node" / node.provider / "node.db").job(job_id)
    assert row is not None
    return row.to_json()


def test_outputs_are_served_to_the_requester_only(node: Node, tmp_path: Path) -> None:
    job = next(j for j in node.jobs() if j["outputs"])
    ref = job["outputs"][0]

    async def main() -> bytes:
        async with open_host(key=load_or_create_key(tmp_path / "stranger.key")) as host:
            req = BlobRequest(job_id=job["job_id"], blob=ref["blob"], offset=0, length=BLOB_CHUNK)
            return await host.request(node.ready["addrs"][0], BLOB_PROTOCOL, req.encode(), timeout=10)

    reply = trio.run(main)
    with pytest.raises(Exception, match="not a party"):
        parse_blob_reply(reply)


def test_sigterm_exits_cleanly(node: Node) -> None:
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc is not None and node.proc.wait(timeout=20) == 0, node.log_tail()
    assert node.proc.stdout is not None
    tail = node.proc.stdout.read()
    assert json.loads(tail.strip().splitlines()[-1])["event"] == "stopped"
