"""Unit tests of the node agent's policy parts: the bidding strategy, node.yaml validation, the SQLite store."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from eth_account import Account

from marketplace.errors import ConfigError
from marketplace.protocol import Announce
from marketplace.types import to_wei
from node.agent.config import DEFAULT_YAML, load_config, parse_config
from node.agent.store import BidRow, NodeStore, ProviderJobRow
from node.agent.strategy import BidContext, Decline, Quote, TableStrategy, estimate_run_seconds

KEY = "0x59c47ca0f6b0f3b45fe64b0ad8e4a7a5c4d3e6ac0a6e1e6a3c6f2d6b2ab0f1f8"
PEER = "16Uiu2HAmQvBFxTbFxDw6A8rLmRqv8oz3qVJ7iFBfmJ5TgqHHTzZi"


def announce(**changes: object) -> Announce:
    now = int(time.time() * 1000)
    fields: dict[str, object] = dict(
        chain_id=31337, market="0x" + "11" * 20, requester=Account.from_key(KEY).address, requester_peer=PEER,
        requester_addrs=["/ip4/127.0.0.1/tcp/4001"], spec_hash="0x" + "22" * 32, kind="inference", device="cpu",
        replicas=1, max_price=str(to_wei(2)), min_collateral=str(to_wei(5)), run_seconds=600, window=60,
        input_bytes=1000, ts_ms=now, bid_until_ms=now + 5000, nonce="0x" + os.urandom(16).hex())
    fields.update(changes)
    return Announce(**fields)  # type: ignore[arg-type]


def context(**changes: object) -> BidContext:
    fields: dict[str, object] = dict(free_capacity=1, free_stake=to_wei(100),
                                     served_kinds=frozenset({"inference", "train"}), device_class="cpu")
    fields.update(changes)
    return BidContext(**fields)  # type: ignore[arg-type]


@pytest.fixture
def strategy() -> TableStrategy:
    cfg = parse_config({"kinds": ["inference", "train"], "prices": {"inference": "1", "train": "3"},
                        "collateral": "10", "min_window": 30, "estimate_base_s": 10, "estimate_mb_per_s": 1})
    return TableStrategy(cfg)


# ------------------------------------------------------------------------------------------------ strategy
def test_offer_prices_from_the_table(strategy: TableStrategy) -> None:
    decision = strategy.decide(announce(), context())
    assert decision == Quote(price=to_wei(1), collateral=to_wei(10), run_seconds=11, min_window=30)
    train = strategy.decide(announce(kind="train", max_price=str(to_wei(3))), context())
    assert isinstance(train, Quote) and train.price == to_wei(3)


@pytest.mark.parametrize(("ann", "ctx", "reason"), [
    ({"kind": "evaluate"}, {}, "kind"),
    ({"device": "cuda"}, {}, "device"),
    ({"min_collateral": str(to_wei(11))}, {}, "collateral"),
    ({}, {"free_capacity": 0}, "capacity"),
    ({}, {"free_stake": to_wei(10) - 1}, "stake"),
    ({"run_seconds": 15}, {}, "too-short"),  # estimate 11 s + margin 5 s > 15 s
    ({"input_bytes": 1000 * 2**20}, {}, "too-short"),  # 1000 MB at 1 MB/s
    ({"window": 29}, {}, "window"),
])
def test_each_decline_reason(strategy: TableStrategy, ann: dict[str, object], ctx: dict[str, object],
                             reason: str) -> None:
    decision = strategy.decide(announce(**ann), context(**ctx))
    assert isinstance(decision, Decline) and decision.reason == reason
    assert not decision


def test_a_price_above_the_max_is_a_counter_offer_or_a_decline(strategy: TableStrategy) -> None:
    over = announce(max_price=str(to_wei(1) - 1))
    counter = strategy.decide(over, context())
    assert isinstance(counter, Quote) and counter.counter and counter.price == to_wei(1)  # our price, not theirs
    assert strategy.decide(announce(), context()) == Quote(price=to_wei(1), collateral=to_wei(10), run_seconds=11,
                                                           min_window=30)
    strict = TableStrategy(strategy.config.model_copy(update={"counter_offers": False}))
    decision = strict.decide(over, context())
    assert isinstance(decision, Decline) and decision.reason == "price"
    # a counter-offer is only made when the price is the one objection
    assert isinstance(strategy.decide(announce(max_price=str(to_wei(1) - 1)), context(free_capacity=0)), Decline)


def test_run_seconds_at_the_bound_is_accepted(strategy: TableStrategy) -> None:
    assert isinstance(strategy.decide(announce(run_seconds=16), context()), Quote)


def test_estimate_grows_with_input() -> None:
    small = estimate_run_seconds(0, base_s=2, mb_per_s=10)
    big = estimate_run_seconds(50 * 2**20, base_s=2, mb_per_s=10)
    assert small == 2 and big == 7


# ------------------------------------------------------------------------------------------------ config
def test_default_yaml_is_valid_and_commented(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(DEFAULT_YAML)
    cfg = load_config(path, env={})
    assert cfg.capacity == 1 and cfg.ops_port == 0 and cfg.settle_margin_s == 5
    assert cfg.price_wei("train") == to_wei(5) and cfg.collateral_wei == to_wei(10)
    assert DEFAULT_YAML.count("\n# ") >= 10


@pytest.mark.parametrize(("data", "fragment"), [
    ({"colateral": "1"}, "colateral: Extra inputs are not permitted"),
    ({"kinds": ["inference", "render"]}, "kinds.1"),
    ({"kinds": []}, "serve at least one kind"),
    ({"prices": {"inference": "cheap"}}, "prices.inference must be an amount"),
    ({"collateral": "-1"}, "collateral must be a non-negative"),
    ({"kinds": ["train"], "prices": {"inference": "1"}}, "no price for served kind(s) train"),
    ({"device": "tpu"}, "device"),
    ({"ops_port": 70000}, "ops_port"),
    ({"listen": "not-an-addr"}, "not a multiaddr"),
    ({"stake": "1e40"}, "does not fit"),
])
def test_config_errors_are_one_clear_line(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="node.yaml")
    message = str(info.value)
    assert fragment in message and "\n" not in message and message.startswith("node.yaml: ")


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read node config"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinds: [inference\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="is a mapping"):
        load_config(bad, env={})


def test_environment_and_options_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("account: alice\nbootstrap: [/ip4/127.0.0.1/tcp/1/p2p/" + PEER + "]\n")
    env = {"AGORA_ACCOUNT": "bob", "AGORA_BOOTSTRAP": f"/ip4/127.0.0.1/tcp/2/p2p/{PEER}, "}
    cfg = load_config(path, env=env)
    assert cfg.account == "alice"  # the file wins over the environment
    assert [a.split("/")[4] for a in cfg.bootstrap] == ["1", "2"]
    cfg = load_config(path, account="carol", bootstrap=[f"/ip4/127.0.0.1/tcp/3/p2p/{PEER}"], ops_port=-1, env=env)
    assert cfg.account == "carol" and len(cfg.bootstrap) == 3 and cfg.ops_port == -1
    assert load_config(None, env={"AGORA_ACCOUNT": "dave"}).account == "dave"


def test_device_class() -> None:
    assert parse_config({}).device_class(True) == "cuda"
    assert parse_config({}).device_class(False) == "cpu"
    assert parse_config({"device": "cpu"}).device_class(True) == "cpu"


# ------------------------------------------------------------------------------------------------ store
def bid_row(nonce: int, **changes: object) -> BidRow:
    fields: dict[str, object] = dict(
        nonce=nonce, ann_id="0x" + "aa" * 32, spec_hash="0x" + "22" * 32, requester="0x" + "33" * 20,
        requester_peer=PEER, requester_addrs=["/ip4/127.0.0.1/tcp/4001"], kind="inference", price=to_wei(1),
        collateral=to_wei(10), run_seconds=11, expiry=1_000, announce={"type": "announce"})
    fields.update(changes)
    return BidRow(**fields)  # type: ignore[arg-type]


def job_row(job_id: str, **changes: object) -> ProviderJobRow:
    fields: dict[str, object] = dict(
        job_id=job_id, ann_id="0x" + "aa" * 32, spec_hash="0x" + "22" * 32, kind="inference", idx=0, replicas=2,
        price=to_wei(1), collateral=to_wei(10), requester="0x" + "33" * 20, requester_peer=PEER,
        requester_addrs=["/ip4/127.0.0.1/tcp/4001"], deadline=2_000, window=60)
    fields.update(changes)
    return ProviderJobRow(**fields)  # type: ignore[arg-type]


def test_store_round_trip_and_resume_queries(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db")
    big_nonce = 2**256 - 1
    store.add_bid(bid_row(big_nonce, expiry=500))
    store.add_bid(bid_row(7, expiry=5_000))
    assert store.bid(big_nonce) == bid_row(big_nonce, expiry=500, created=store.bid(big_nonce).created)  # type: ignore[union-attr]
    assert {b.nonce for b in store.pending_bids()} == {big_nonce, 7}
    assert store.expire_bids(1_000) == 1
    assert [b.nonce for b in store.pending_bids()] == [7]
    assert {b.nonce for b in store.unclaimed_bids("0x" + "22" * 32)} == {big_nonce, 7}  # an expired bid may win
    assert store.unclaimed_bids("0x" + "23" * 32) == []
    store.set_bid_outcome(7, "won", "0x" + "01" * 32)
    assert store.pending_bids() == [] and store.bid(7).job_id == "0x" + "01" * 32  # type: ignore[union-attr]

    assert store.add_job(job_row("0x" + "01" * 32))
    assert not store.add_job(job_row("0x" + "01" * 32, state="failed"))  # first writer wins
    store.add_job(job_row("0x" + "02" * 32, state="settled"))
    store.add_job(job_row("0x" + "03" * 32, state="running"))
    store.update_job("0x" + "01" * 32, state="computed", result="0x" + "44" * 32, salt="0x" + "55" * 32,
                     outputs=[{"name": "manifest.json", "blob": "sha256:" + "66" * 32, "size": 3}], earnings=-5)
    store.close()

    # A restarted node sees exactly what it wrote, salt included, and which jobs are unfinished.
    again = NodeStore(tmp_path / "node.db")
    unsettled = {j.job_id: j for j in again.unsettled_jobs()}
    assert set(unsettled) == {"0x" + "01" * 32, "0x" + "03" * 32}
    job = unsettled["0x" + "01" * 32]
    assert (job.state, job.salt, job.earnings, job.outputs[0]["size"]) == (  # type: ignore[index]
        "computed", "0x" + "55" * 32, -5, 3)
    assert again.active_count() == 1  # the running job holds capacity; the computed one does not
    assert again.state_counts() == {"computed": 1, "settled": 1, "running": 1}
    assert again.job("0x" + "01" * 32).to_json()["price"] == str(to_wei(1))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown job state"):
        again.update_job("0x" + "01" * 32, state="paid")
    with pytest.raises(KeyError):
        again.update_job("0x" + "01" * 32, colour="red")
    again.set_meta("last_block", "42")
    assert again.get_meta("last_block") == "42" and again.get_meta("nothing") is None
    again.close()
    mode = sqlite3.connect(tmp_path / "node.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
