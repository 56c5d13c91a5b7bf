"""The one model layer: the base (frozen, strict, unknown fields refused, JSON round trip), RFC 8785 canonical
JSON (a JavaScript signer's bytes), schema versions of the SQLite stores, atomic writes."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from eth_account import Account
from pydantic import ValidationError

from marketplace import protocol as P
from marketplace.errors import StoreVersionError
from marketplace.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from marketplace.models import Bytes32, ChecksumAddress, Model, Record, WeiInt, canonical_json
from marketplace.requester.store import SCHEMA as REQUESTER_SCHEMA
from marketplace.requester.store import JobState, RequesterStore
from marketplace.sqlite import SqliteStore
from marketplace.types import Bid, SignedBid
from node.agent.store import _SCHEMA as NODE_SCHEMA
from node.agent.store import NodeStore

KEY = Account.from_key("0x" + "11" * 32)


class Thing(Model):
    name: str
    amount: WeiInt
    digest: Bytes32
    owner: ChecksumAddress
    tags: list[str] = []


class Counter(Record):
    n: int = 0


def _thing() -> Thing:
    return Thing(name="ünï", amount=2**200, digest=b"\x07" * 32, owner=KEY.address.lower())


# ------------------------------------------------------------------------------------------------ the base
def test_model_is_frozen_and_refuses_unknown_fields_and_loose_types() -> None:
    t = _thing()
    with pytest.raises(ValidationError):
        t.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        Thing.from_json({**t.to_json(), "extra": 1})
    with pytest.raises(ValidationError):
        Thing(name=5, amount=1, digest=b"\x00" * 32, owner=KEY.address)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):  # a float is not an amount
        Thing.from_json({**t.to_json(), "amount": 1.5})
    with pytest.raises(ValidationError):
        Thing.from_json({**t.to_json(), "digest": "0x1234"})


def test_model_json_round_trip_keeps_wei_as_decimal_strings() -> None:
    t = _thing()
    doc = t.to_json()
    assert doc == {"name": "ünï", "amount": str(2**200), "digest": "0x" + "07" * 32, "owner": KEY.address,
                   "tags": []}
    assert t.owner == KEY.address  # checksummed on the way in
    assert Thing.from_json(doc) == t
    assert Thing.from_json(json.dumps(doc)) == t and Thing.from_json(json.dumps(doc).encode()) == t
    assert Thing.from_json(t) is t
    assert json.loads(t.to_json_text()) == doc and t.to_json_text().endswith("}\n")


def test_record_is_mutable_but_validates_assignments() -> None:
    c = Counter()
    c.n += 2
    assert c.n == 2
    with pytest.raises(ValidationError):
        c.n = "3"  # type: ignore[assignment]


def test_signed_bid_json_is_the_bid_file_format() -> None:
    bid = Bid(spec_hash=b"\x01" * 32, requester=KEY.address, provider=KEY.address, price=10**30, collateral=7,
              run_seconds=60, expiry=1_000, nonce=2**256 - 1)
    signed = SignedBid(bid=bid, v=27, r=b"\x02" * 32, s=b"\x03" * 32)
    doc = signed.to_json()
    assert doc["version"] == 1 and doc["signature"] == {"v": 27, "r": "0x" + "02" * 32, "s": "0x" + "03" * 32}
    assert doc["bid"]["specHash"] == "0x" + "01" * 32 and doc["bid"]["nonce"] == str(2**256 - 1)
    assert doc["bid"]["price"] == str(10**30) and doc["bid"]["runSeconds"] == 60
    assert SignedBid.from_json(doc) == signed and (signed.v, signed.r, signed.s) == (27, b"\x02" * 32, b"\x03" * 32)
    assert bid.as_message()["price"] == 10**30 and bid.as_message()["specHash"] == b"\x01" * 32
    with pytest.raises(ValueError, match="version"):
        SignedBid.from_json({**doc, "version": 2})


# ------------------------------------------------------------------------------------------------ RFC 8785
def test_canonical_json_follows_rfc_8785() -> None:
    assert canonical_json({"b": 12.0, "a": [1, 0.1, -0.0, 1e21]}) == b'{"a":[1,0.1,0,1e+21],"b":12}'
    assert canonical_json({"é": "ünï €"}) == '{"é":"ünï €"}'.encode()  # UTF-8, not \\u escapes
    assert canonical_json({"z": 1, "a": {"y": None, "b": True}}) == b'{"a":{"b":true,"y":null},"z":1}'
    assert canonical_json({"n": 2**53 - 1}) == b'{"n":9007199254740991}'
    with pytest.raises(ValueError):
        canonical_json({"n": 2**53 + 1})  # such integers travel as decimal strings
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def _advert(throughput: dict[str, float]) -> P.Advert:
    record = P.PeerRecord.sign(KEY.key, "16Uiu2HAm" + "A" * 44, 31337)
    return P.Advert(chain_id=31337, provider=KEY.address, peer=record.peer_id, addrs=[], record=record.to_json(),
                    device="Ünïcode GPU", device_class="cpu", memory_mb=1, torch="2", throughput=throughput,
                    prices={"inference": str(2**70)}, capacity=1, ts_ms=1_700_000_000_000)


def test_a_javascript_signature_over_an_integer_valued_float_verifies() -> None:
    """JSON.stringify writes 12 for 12.0: a JS signer's bytes are RFC 8785, and so are Python's."""
    adv = _advert({"gflops": 12.0, "hash_gbps": 2.5})
    js_body = ('{"addrs":[],"capacity":1,"chain_id":31337,"device":"Ünïcode GPU","device_class":"cpu",'
               '"memory_mb":1,"peer":"' + adv.peer + '","prices":{"inference":"' + str(2**70) + '"},"provider":"'
               + adv.provider + '","record":' + canonical_json(adv.record).decode() + ',"throughput":'
               '{"gflops":12,"hash_gbps":2.5},"torch":"2","ts_ms":1700000000000,"type":"advert","v":1}').encode()
    assert canonical_json(adv.body()) == js_body
    from eth_utils import keccak

    js_signed = adv.model_copy(update={"signature": P.sign_digest(KEY.key, keccak(js_body))})
    P.verify_signed(P.decode(js_signed.encode(), P.Advert, max_bytes=P.MAX_ADVERT_BYTES), KEY.address)
    # the wire bytes themselves: the integer-valued float goes as 12, read back as the float 12.0
    assert b'"gflops":12,' in js_signed.encode()
    assert P.decode(js_signed.encode(), P.Advert, max_bytes=P.MAX_ADVERT_BYTES).throughput["gflops"] == 12.0


def test_a_message_with_an_integer_beyond_2_53_is_malformed() -> None:
    data = json.dumps({"type": "assigned", "v": 1, "ann": "0x" + "11" * 32, "job_id": "0x" + "22" * 32, "index": 0,
                       "block": 2**60, "tx": "0x" + "33" * 32}).encode()
    with pytest.raises(P.ProtocolError) as err:
        P.decode(data, P.Assigned)
    assert err.value.reason == "malformed"


def test_ack_carries_a_reject_code() -> None:
    assert P.Ack(ok=False, reason="no").code is P.RejectCode.OTHER  # old call sites
    assert P.Ack(ok=True).code is None
    ack = P.Ack.reject(P.ProtocolError("replayed", reason="replay"))
    back = P.decode(ack.encode(), P.Ack)
    assert back.code is P.RejectCode.REPLAY and back.reason == "replayed" and not back.ok
    with pytest.raises(P.ProtocolError):
        P.decode(json.dumps({**ack.to_json(), "code": "exploded"}).encode(), P.Ack)


# ------------------------------------------------------------------------------------------------ stores
def test_a_version_0_database_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    for schema, cls in ((REQUESTER_SCHEMA, RequesterStore), (NODE_SCHEMA, NodeStore)):
        path = tmp_path / f"{cls.__name__}.db"
        db = sqlite3.connect(path)  # what the code before schema versions left behind
        db.executescript(schema)
        db.execute("CREATE TABLE marker (x INTEGER)")
        db.execute("INSERT INTO marker VALUES (42)")
        db.commit()
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        db.close()
        store = cls(path)
        assert store.schema_version == 1
        assert store._query("SELECT x FROM marker")[0][0] == 42
        store.close()
    store = RequesterStore(tmp_path / "RequesterStore.db")
    store.add_job(ann_id="0x01", announcement={}, spec_hash="0x02", spec_path=None, k=1, max_price=2**100)
    store.update_job("0x01", state=JobState.SETTLED)
    row = store.job("0x01")
    assert row is not None and row.state is JobState.SETTLED and row.to_json()["max_price"] == str(2**100)
    store.close()


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def third(db: sqlite3.Connection) -> None:
        calls.append(3)
        db.execute("INSERT INTO t VALUES (3)")

    steps = ["CREATE TABLE t (x INTEGER);", "INSERT INTO t VALUES (2); -- a comment\nINSERT INTO t VALUES (22);",
             third]
    SqliteStore(tmp_path / "s.db", steps[:1]).close()
    store = SqliteStore(tmp_path / "s.db", steps)
    assert store.schema_version == 3 and calls == [3]
    store.close()
    store = SqliteStore(tmp_path / "s.db", steps)  # nothing runs again
    assert [r[0] for r in store._query("SELECT x FROM t ORDER BY rowid")] == [2, 22, 3] and calls == [3]
    store.close()


def test_a_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db", ["CREATE TABLE t (x INTEGER);"]).close()
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(tmp_path / "s.db", ["CREATE TABLE t (x INTEGER);", "CREATE TABLE u (y); SELECT * FROM nowhere;"])
    store = SqliteStore(tmp_path / "s.db", ["CREATE TABLE t (x INTEGER);"])
    assert store.schema_version == 1 and not store._query("SELECT name FROM sqlite_master WHERE name = 'u'")
    store.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    NodeStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    with pytest.raises(StoreVersionError, match="schema version 7, newer"):
        NodeStore(path)


# ------------------------------------------------------------------------------------------------ atomic writes
def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    atomic_write_bytes(target, b"\x00\x01", mode=0o600)
    assert target.read_bytes() == b"\x00\x01" and (target.stat().st_mode & 0o777) == 0o600
    assert sorted(os.listdir(target.parent)) == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def crash(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["state.json"]
