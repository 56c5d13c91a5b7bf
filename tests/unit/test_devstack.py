"""marketplace.devstack's pieces that need no process: metrics parsing, log tails, polling, conservation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from marketplace.devstack import check_conservation, log_tail, parse_metric, wait_until

METRICS = """# HELP agora_messages_rejected_total Messages rejected
# TYPE agora_messages_rejected_total counter
agora_messages_rejected_total{reason="funds"} 2.0
agora_messages_rejected_total{kind="bid",reason="stale"} 1.0
agora_earnings_wei_total 1e+18
"""


def test_parse_metric_matches_name_and_exact_labels() -> None:
    assert parse_metric(METRICS, "agora_earnings_wei_total") == 1e18
    assert parse_metric(METRICS, "agora_messages_rejected_total", reason="funds") == 2.0
    assert parse_metric(METRICS, "agora_messages_rejected_total", reason="stale", kind="bid") == 1.0  # sorted
    assert parse_metric(METRICS, "agora_messages_rejected_total", reason="stale") == 0.0  # labels must match
    assert parse_metric(METRICS, "agora_messages_rejected") == 0.0  # a prefix is not the name


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert log_tail(log) == "" and log_tail(None) == ""
    log.write_text("a" * 10 + "tail")
    assert log_tail(log, 4) == "tail"


def test_wait_until_returns_the_value_or_names_what_timed_out() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 2 and "done", 5, "the counter", every=0.01) == "done"
    with pytest.raises(AssertionError, match="waiting for nothing"):
        wait_until(lambda: None, 0.05, "nothing", every=0.01)


def test_check_conservation() -> None:
    ok = dict(market_tokens=100, registry_tokens=50, escrow=30, market_balances=[40, 30], stakes=[(40, 10)])
    check_conservation(**ok)
    with pytest.raises(AssertionError, match="conservation broken: tokens held 151 != owed 150"):
        check_conservation(**{**ok, "market_tokens": 101})
    with pytest.raises(AssertionError, match="registry conservation broken"):  # the sum holds, the split not
        check_conservation(**{**ok, "registry_tokens": 60, "market_tokens": 90})
