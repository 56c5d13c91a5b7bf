"""Fuzzing the wire protocol: the parser, the announcement validator, and a live host in another process.

1. `decode` on thousands of generated inputs (hypothesis, and seeded random mutation of a valid message of every
   type in marketplace/protocol.py) never raises anything but ProtocolError, and what it accepts is of the type
   asked for.
2. `AnnounceValidator` rejects malformed, oversized, unsigned, wrongly signed, replayed, stale (past and future),
   wrong-chain, wrong-market, wrong-topic and rate-exceeding announcements, each with its `reason`.
3. A host in a separate process (`_peer.py --fuzz-target`) gets junk frames on /agora/bid/1, /agora/assign/1,
   /agora/result/1 and /agora/blob/1 (random bytes, truncated length prefixes, oversized lengths, valid length +
   junk JSON) and junk gossip on job topics; it stays up, answers ping, and its counts of rejects (frames reset by
   the host, payloads refused by `decode`, announcements by reason) equal what this side predicts locally.
"""

from __future__ import annotations

import copy
import json
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("libp2p")
trio = pytest.importorskip("trio")
hypothesis = pytest.importorskip("hypothesis")

from _peer import PeerProcess
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.crypto.secp256k1 import create_new_key_pair

from marketplace import admission
from marketplace import protocol as P
from marketplace.p2p import MAX_FRAME, FrameError, PeerRecord, open_host, peer_id_of, read_frame
from marketplace.types import Bid, SignedBid

PEER = Path(__file__).with_name("_peer.py")
CHAIN_ID = 31337
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
REQUESTER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
OTHER_KEY = "0x59c47ca0f6b0f3b45fe64b0ad8e4a7a5c4d3e6ac0a6e1e6a3c6f2d6b2ab0f1f8"
REQUESTER = Account.from_key(REQUESTER_KEY)
PEER_ID = str(peer_id_of(create_new_key_pair()))
H32 = "0x" + "ab" * 32
TOPIC = P.job_topic("inference", "cpu")
ALL_TYPES = tuple(P.GOSSIP_TYPES.values()) + tuple(P.REQUEST_TYPES.values())


# ---------------------------------------------------------------------------------------------------- valid messages
def announce(*, now_ms: int | None = None, key: str = REQUESTER_KEY, **over: Any) -> P.Announce:
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    fields: dict[str, Any] = dict(
        chain_id=CHAIN_ID, market=MARKET, requester=REQUESTER.address, requester_peer=PEER_ID,
        requester_addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"], spec_hash=H32, kind="inference",
        device="cpu", replicas=1, max_price="1000000000000000000", run_seconds=60, window=60, input_bytes=1024,
        ts_ms=ts, bid_until_ms=ts + 60_000, nonce="0x" + os.urandom(16).hex())
    fields.update(over)
    return P.Announce(**fields).signed(key)


def valid_messages() -> list[P._Msg]:
    """One valid instance of every message type of marketplace/protocol.py."""
    record = PeerRecord.sign(REQUESTER_KEY, PEER_ID, CHAIN_ID).to_json()
    sig = P.Sig(v=27, r=H32, s=H32)
    outs = [P.OutputRef(name="outputs.safetensors", blob="sha256:" + "0" * 64, size=10),
            P.OutputRef(name="manifest.json", blob="sha256:" + "1" * 64, size=20)]
    return [
        announce(),
        P.Advert(chain_id=CHAIN_ID, provider=REQUESTER.address, peer=PEER_ID, addrs=["/ip4/127.0.0.1/tcp/1"],
                 record=record, device="cpu", device_class="cpu", memory_mb=1024, torch="2.13",
                 throughput={"gflops": 1.5}, prices={"inference": "10"}, capacity=2,
                 ts_ms=int(time.time() * 1000)).signed(REQUESTER_KEY),
        P.BidOffer(ann=H32, bid=SignedBid(bid=Bid(spec_hash=H32, requester=REQUESTER.address,
                                                   provider=REQUESTER.address, price=10**30, collateral=1,
                                                   run_seconds=60, expiry=99, nonce=2**256 - 1),
                                          v=27, r=H32, s=H32),
                   record=record, eta_s=1.5),
        P.Assigned(ann=H32, job_id=H32, index=0, block=5, tx=H32),
        P.ResultMsg(job_id=H32, result=H32, sig=sig, outputs=outs),
        P.CommitMsg(job_id=H32, index=1, commitment=H32, sig=sig),
        P.RevealMsg(job_id=H32, index=1, result=H32, salt=H32, outputs=outs),
        P.BlobRequest(job_id=H32, blob="spec:0x" + "cd" * 32, offset=0, length=P.BLOB_CHUNK),
        P.Ack(ok=False, reason="no"),
    ]


VALID = {m.type: m for m in valid_messages()}


# ---------------------------------------------------------------------------------------------------- mutation
JUNK_VALUES: list[Any] = [None, True, False, 0, -1, 1 << 70, -(1 << 70), 1.5, -0.0, 1e308, "", "x" * 300,
                          "0x", "0x" + "g" * 64, "\u0000\ud7ff\uffff", [], [1, [2, [3]]], {}, {"a": {"b": None}},
                          "NaN", "1e400", "sha256:", "spec:0x", "/ip4/", "9" * 40]


def _junk(obj: Any) -> bytes:
    """Mutated messages as bytes: compact sorted JSON, whatever they hold (integers beyond 2^53 included, which
    the canonical encoding refuses)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def rand_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(JUNK_VALUES + [rng.randint(-2**64, 2**64), os.urandom(rng.randint(0, 8)).hex()])
    if roll < 0.75:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["type", "v", "a", "job_id", ""]): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutate_obj(obj: Any, rng: random.Random) -> Any:
    """One random structural change somewhere in a JSON object: replace, delete, add, retype, nest."""
    obj = copy.deepcopy(obj)
    containers = [obj]
    target = obj
    while isinstance(target, (dict, list)) and target and rng.random() < 0.5:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        child = target[rng.choice(keys)]
        if not isinstance(child, (dict, list)):
            break
        target = child
        containers.append(target)
    op = rng.random()
    if isinstance(target, dict) and target:
        key = rng.choice(list(target))
        if op < 0.5:
            target[key] = rand_json(rng)
        elif op < 0.7:
            del target[key]
        elif op < 0.85:
            target[rng.choice(["extra", "Type", key + "_", ""])] = rand_json(rng)
        else:
            target[key] = [target[key]]
    elif isinstance(target, list):
        if target and op < 0.5:
            target[rng.randrange(len(target))] = rand_json(rng)
        elif op < 0.8:
            target.append(rand_json(rng))
        else:
            target.clear()
    return obj


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.random()
    if op < 0.3 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op < 0.5:
        b = b[:rng.randrange(len(b) + 1)]
    elif op < 0.7:
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = os.urandom(rng.randint(1, 16))
    elif op < 0.8:
        b = bytearray(b"[" * rng.randint(1000, 8000) + b"]" * rng.randint(0, 10))  # deep nesting
    elif op < 0.9:
        b = bytearray(os.urandom(rng.randint(0, 64)))
    else:
        b = bytearray(data.replace(b'"', b"'", 1))
    return bytes(b)


def junk_payload(rng: random.Random, base: P._Msg | None = None) -> bytes:
    """Mostly near-valid messages (the interesting case), sometimes plain noise."""
    base = base if base is not None else rng.choice(list(VALID.values()))
    roll = rng.random()
    if roll < 0.6:
        return _junk(mutate_obj(json.loads(base.encode()), rng))
    if roll < 0.9:
        return mutate_bytes(base.encode(), rng)
    return json.dumps(rand_json(rng)).encode()


def check_decode(data: bytes, expect: Any) -> Any:
    """decode() either returns an instance of the expected type(s) or raises ProtocolError: nothing else."""
    try:
        msg = P.decode(data, expect)
    except P.ProtocolError as err:
        assert err.reason in {"malformed", "oversized", "type"}, err.reason
        return None
    assert isinstance(msg, expect)
    return msg


# ---------------------------------------------------------------------------------------------------- 1. decode
def test_valid_messages_roundtrip() -> None:
    for msg in VALID.values():
        assert P.decode(msg.encode(), type(msg)) == msg
        assert P.decode(msg.encode(), ALL_TYPES) == msg


@pytest.mark.parametrize("kind", sorted(VALID))
def test_decode_random_mutations_raise_only_protocol_error(kind: str) -> None:
    rng = random.Random(f"agora-{kind}")
    valid = VALID[kind]
    cls = type(valid)
    accepted = rejected = 0
    for _ in range(1500):
        if rng.random() < 0.6:
            data = _junk(mutate_obj(json.loads(valid.encode()), rng))
        else:
            data = mutate_bytes(valid.encode(), rng)
        got = check_decode(data, cls)
        check_decode(data, ALL_TYPES)
        if got is None:
            rejected += 1
        else:
            accepted += 1
    assert rejected > 500  # the mutations really were junk, mostly
    # an oversized message is refused before parsing
    with pytest.raises(P.ProtocolError) as info:
        P.decode(b" " * (P.MAX_MESSAGE_BYTES + 1), cls)
    assert info.value.reason == "oversized"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=80),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_hypothesis_fields(data: st.DataObject) -> None:
    """A valid message with some fields replaced by arbitrary JSON (or removed, or extra ones added)."""
    valid = data.draw(st.sampled_from(list(VALID.values())))
    obj = json.loads(valid.encode())
    for key in data.draw(st.lists(st.sampled_from(sorted(obj)), max_size=4, unique=True)):
        if data.draw(st.booleans()):
            obj[key] = data.draw(json_values)
        else:
            del obj[key]
    obj.update(data.draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    payload = json.dumps(obj, allow_nan=False).encode()
    check_decode(payload, type(valid))
    check_decode(payload, ALL_TYPES)


@settings(max_examples=1000, deadline=None)
@given(payload=st.binary(max_size=512) | st.text(max_size=256).map(str.encode) | json_values.map(
    lambda v: json.dumps(v).encode()))
def test_decode_hypothesis_anything(payload: bytes) -> None:
    check_decode(payload, ALL_TYPES)
    for cls in ALL_TYPES:
        check_decode(payload, cls)


# ---------------------------------------------------------------------------------------------------- 2. validator
class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def reason_of(validator: admission.AnnounceValidator, data: bytes, topic: str | None = TOPIC) -> str:
    try:
        validator.check(data, topic)
    except P.ProtocolError as err:
        return err.reason
    return "accepted"


def make_validator(wall: FakeClock) -> admission.AnnounceValidator:
    v = admission.AnnounceValidator(chain_id=CHAIN_ID, market=MARKET, wall=wall)
    v.rates = admission.RateLimiter(v.rates.rate, v.rates.burst, clock=FakeClock(0.0))  # no refill during the test
    return v


def test_announce_validator_reasons() -> None:
    wall = FakeClock(time.time())
    now = int(wall.t * 1000)
    v = make_validator(wall)

    good = announce(now_ms=now)
    assert reason_of(v, good.encode()) == "accepted"
    assert reason_of(v, good.encode()) == "replay"  # the same announcement again
    assert reason_of(v, b"{not json") == "malformed"
    assert reason_of(v, json.dumps({**json.loads(announce(now_ms=now).encode()), "x": 1}).encode()) == "malformed"
    big = announce(now_ms=now).encode() + b" " * P.MAX_ANNOUNCE_BYTES  # valid JSON, too long
    assert reason_of(v, big) == "oversized"
    unsigned = announce(now_ms=now).model_copy(update={"signature": None})
    assert reason_of(v, unsigned.encode()) == "unsigned"
    assert reason_of(v, announce(now_ms=now, key=OTHER_KEY).encode()) == "signature"  # signed by someone else
    tampered = announce(now_ms=now).model_copy(update={"max_price": "1"})  # changed after signing
    assert reason_of(v, tampered.encode()) == "signature"
    junk_sig = announce(now_ms=now).model_copy(update={"signature": "0x" + "00" * 65})
    assert reason_of(v, junk_sig.encode()) == "signature"
    assert reason_of(v, announce(now_ms=now - 60_000).encode()) == "stale"  # from the past
    assert reason_of(v, announce(now_ms=now + 60_000).encode()) == "stale"  # from the future
    closed = announce(now_ms=now - 10_000, bid_until_ms=now - 1)
    assert reason_of(v, closed.encode()) == "stale"  # bid window already over
    assert reason_of(v, announce(now_ms=now, chain_id=1).encode()) == "chain"
    assert reason_of(v, announce(now_ms=now, market="0x" + "11" * 20).encode()) == "chain"
    assert reason_of(v, announce(now_ms=now).encode(), P.job_topic("train", "cuda")) == "topic"
    assert reason_of(v, announce(now_ms=now, kind="train").encode()) == "topic"
    too_long = announce(now_ms=now, bid_until_ms=now + (P.MAX_BID_WINDOW_S + 1) * 1000)
    assert reason_of(v, too_long.encode()) == "malformed"
    assert reason_of(v, announce(now_ms=now, max_price=str(1 << 96)).encode()) == "malformed"
    # Advert on a job topic: wrong type
    assert reason_of(v, VALID["advert"].encode()) == "type"

    # rate: the burst is spent by valid announcements; the next one is refused, per requester
    fresh = make_validator(wall)
    reasons = Counter(reason_of(fresh, announce(now_ms=now).encode()) for _ in range(fresh.rates.burst + 5))
    assert reasons == Counter({"accepted": fresh.rates.burst, "rate": 5})
    other = announce(now_ms=now, requester=Account.from_key(OTHER_KEY).address, key=OTHER_KEY)
    assert reason_of(fresh, other.encode()) == "accepted"  # another requester has its own budget
    # forged announcements do not burn the real requester's budget (signature is checked before rate)
    third = make_validator(wall)
    for _ in range(third.rates.burst * 2):
        assert reason_of(third, announce(now_ms=now, key=OTHER_KEY).encode()) == "signature"
    assert reason_of(third, announce(now_ms=now).encode()) == "accepted"


@settings(max_examples=600, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_announce_validator_never_accepts_a_mutated_announcement(seed: int) -> None:
    rng = random.Random(seed)
    wall = FakeClock(time.time())
    v = make_validator(wall)
    base = announce(now_ms=int(wall.t * 1000))
    data = _junk(mutate_obj(json.loads(base.encode()), rng)) if rng.random() < 0.7 \
        else mutate_bytes(base.encode(), rng)
    try:
        got = v.check(data, TOPIC)
    except P.ProtocolError as err:
        assert err.reason in {"malformed", "oversized", "type", "unsigned", "signature", "stale", "chain",
                              "topic", "replay", "rate"}
        return
    # only a mutation that left the signed content as it was can pass
    assert got.body() == base.body() and got.signature is not None


# ---------------------------------------------------------------------------------------------------- 3. live host
FRAMES_PER_PROTOCOL = 800
CONCURRENCY = 16
EXPECT = {P.BID_PROTOCOL: P.BidOffer, P.ASSIGN_PROTOCOL: P.Assigned,
          P.RESULT_PROTOCOL: (P.ResultMsg, P.CommitMsg, P.RevealMsg), P.BLOB_PROTOCOL: P.BlobRequest}
VALID_FOR = {P.BID_PROTOCOL: ["bid"], P.ASSIGN_PROTOCOL: ["assigned"],
             P.RESULT_PROTOCOL: ["result", "commit", "reveal"], P.BLOB_PROTOCOL: ["blob"]}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[PeerProcess]:
    proc = PeerProcess([sys.executable, str(PEER), "--fuzz-target", str(tmp_path / "t.key"), str(CHAIN_ID),
                        MARKET])
    try:
        yield proc
    finally:
        proc.stop()


def junk_stream_bytes(rng: random.Random, protocol: str) -> bytes:
    """What one fuzz stream writes before closing its side: one of the four kinds of junk (or a valid frame)."""
    kind = rng.random()
    if kind < 0.15:  # random bytes
        return os.urandom(rng.randint(0, 64))
    if kind < 0.3:  # a truncated length prefix, or a length promising more than is sent
        if rng.random() < 0.5:
            return os.urandom(rng.randint(0, 3))
        body = os.urandom(rng.randint(0, 20))
        return struct.pack(">I", len(body) + rng.randint(1, 1000)) + body
    if kind < 0.45:  # an oversized length
        return struct.pack(">I", rng.randint(MAX_FRAME + 1, 2**32 - 1)) + os.urandom(rng.randint(0, 32))
    if kind < 0.5:  # a valid message for this protocol
        payload = VALID[rng.choice(VALID_FOR[protocol])].encode()
    else:  # valid length + junk JSON
        payload = junk_payload(rng)
    return struct.pack(">I", len(payload)) + payload


def predict(data: bytes, expect: Any) -> str:
    """What the host will do with a stream that wrote `data` and closed: 'frame' (reset by P2PHost.serve),
    'rejected' (handler's decode refused it) or 'decoded'."""
    if len(data) < 4:
        return "frame"
    (size,) = struct.unpack(">I", data[:4])
    if size > MAX_FRAME or size > len(data) - 4:
        return "frame"
    try:
        P.decode(data[4:4 + size], expect)
    except P.ProtocolError:
        return "rejected"
    return "decoded"


async def send_junk(node: Any, addr: str, protocol: str, data: bytes) -> str:
    """Write `data` on a fresh stream, close our side, read the answer: 'ack-ok', 'ack-refused' or 'reset'."""
    stream = await node.open_stream(addr, protocol)
    try:
        try:
            await stream.write(data)
            await stream.close_write()
        except Exception:  # noqa: BLE001 - the host reset the stream before we finished writing
            return "reset"
        reply = await read_frame(stream, timeout=10)
    except FrameError:
        return "reset"
    finally:
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - already closed by the peer
            pass
    ack = P.decode(reply, P.Ack)
    return "ack-ok" if ack.ok else "ack-refused"


def gossip_corpus(rng: random.Random, validator: admission.AnnounceValidator) -> tuple[list[bytes], Counter[str]]:
    """Junk and invalid announcements (and a few valid ones and their replays), with the reasons a fresh
    validator gives for them in this order (what the target must count)."""
    now = int(time.time() * 1000)
    items: list[bytes] = []
    for _ in range(25):
        good = announce(now_ms=now).encode()
        items += [good, good]  # the second is a replay
    items += [announce(now_ms=now, key=OTHER_KEY).encode() for _ in range(15)]
    items += [announce(now_ms=now).model_copy(update={"signature": None}).encode() for _ in range(10)]
    items += [announce(now_ms=now - 120_000).encode() for _ in range(10)]
    items += [announce(now_ms=now + 120_000).encode() for _ in range(10)]
    items += [announce(now_ms=now, chain_id=5).encode() for _ in range(10)]
    items += [announce(now_ms=now, kind="train").encode() for _ in range(10)]
    items += [announce(now_ms=now).encode() + b" " * P.MAX_ANNOUNCE_BYTES for _ in range(5)]
    base = announce(now_ms=now)
    items += [junk_payload(rng, base if rng.random() < 0.7 else None) for _ in range(150)]
    items += [os.urandom(rng.randint(1, 200)) for _ in range(20)]
    rng.shuffle(items)
    expected = Counter(reason_of(validator, data) for data in items)
    return items, expected


@pytest.mark.integration  # a peer process
def test_live_host_survives_junk_frames_and_gossip(target: PeerProcess) -> None:
    rng = random.Random(2026)
    streams = {p: [junk_stream_bytes(rng, p) for _ in range(FRAMES_PER_PROTOCOL)] for p in EXPECT}
    predicted = {p: Counter(predict(d, EXPECT[p]) for d in datas) for p, datas in streams.items()}
    for p, counts in predicted.items():  # every kind of outcome is exercised on every protocol
        assert counts["frame"] > 100 and counts["rejected"] > 300 and counts["decoded"] > 10, (p, counts)
    outcomes: dict[str, Counter[str]] = {p: Counter() for p in EXPECT}
    corpus: list[bytes] = []
    expected_gossip: Counter[str] = Counter()

    async def main() -> None:
        async with open_host(key=create_new_key_pair(), gossip=True) as node:
            await node.connect(target.addr)
            limit = trio.Semaphore(CONCURRENCY)

            async def one(protocol: str, data: bytes) -> None:
                async with limit:
                    outcomes[protocol][await send_junk(node, target.addr, protocol, data)] += 1

            async with trio.open_nursery() as nursery:
                for protocol, datas in streams.items():
                    for data in datas:
                        nursery.start_soon(one, protocol, data)
            assert await node.ping(target.addr, timeout=5) > 0

            assert await node.gossip.wait_for_topic_peers(TOPIC, 1, timeout=20)
            # the target's validator starts fresh, as does this copy: same order, same verdicts (made just
            # before publishing, so nothing goes stale in between; the valid ones stay under the rate burst)
            corpus[:], expected = gossip_corpus(rng, admission.AnnounceValidator(chain_id=CHAIN_ID, market=MARKET))
            expected_gossip.update(expected)
            for data in corpus:
                await node.gossip.publish(TOPIC, data)
            assert await node.ping(target.addr, timeout=5) > 0

    trio.run(main)

    assert expected_gossip["accepted"] >= 25 and expected_gossip["replay"] >= 25
    assert {"signature", "unsigned", "stale", "chain", "topic", "oversized", "malformed"} <= set(expected_gossip)
    for p in EXPECT:  # what this side saw matches the prediction
        assert outcomes[p] == Counter({"reset": predicted[p]["frame"], "ack-refused": predicted[p]["rejected"],
                                       "ack-ok": predicted[p]["decoded"]}), p
    deadline = time.monotonic() + 30
    while True:
        state = target.command({"cmd": "state"}, reply="state")
        if sum(state["gossip"].values()) >= len(corpus) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for p in EXPECT:  # and what the target counted matches too
        assert state["frame_rejects"].get(p, 0) == predicted[p]["frame"], p
        assert state["rejected"].get(p, 0) == predicted[p]["rejected"], p
        assert state["decoded"].get(p, 0) == predicted[p]["decoded"], p
    assert Counter(state["gossip"]) == expected_gossip
    assert state["gossip_rejected"] == len(corpus) - expected_gossip["accepted"]
    assert target.proc.poll() is None
