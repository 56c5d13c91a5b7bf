"""Deployed code sizes of the committed artifacts: JobMarket keeps at least 20% headroom under EIP-170."""

from __future__ import annotations

from marketplace.compiled import contract_names, load_artifact

EIP170_LIMIT = 24_576
JOB_MARKET_MAX = int(EIP170_LIMIT * 0.8)  # 19,660 bytes: room for the next features


def _deployed_size(name: str) -> int:
    return (len(load_artifact(name)["deployedBytecode"]) - 2) // 2


def test_job_market_keeps_a_fifth_of_the_code_size_limit_free() -> None:
    size = _deployed_size("JobMarket")
    assert 0 < size <= JOB_MARKET_MAX, f"JobMarket deployed bytecode is {size:,} bytes, over {JOB_MARKET_MAX:,}"


def test_every_contract_fits_eip170() -> None:
    sizes = {name: _deployed_size(name) for name in contract_names()}
    assert sizes and all(0 < s <= EIP170_LIMIT for s in sizes.values()), sizes
