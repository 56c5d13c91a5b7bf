"""The public Python API as a user meets it: the script in docs/requester.md, run as written (a file, a fresh
interpreter, configured by the AGORA_* environment) against a real chain, a real bootstrap node and a real
provider node process; and the names `marketplace` promises to export."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from _market_procs import MarketNet, NodeProc, delta, wait_until  # noqa: E402

from marketplace.types import to_wei  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PRICE = "0.7"


def doc_script() -> str:
    """The first python block of docs/requester.md's "From Python" section."""
    text = (ROOT / "docs" / "requester.md").read_text()
    section = text[text.index("## From Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/requester.md has no python block under 'From Python'"
    return match.group(1)


def test_the_public_names_resolve() -> None:
    import marketplace

    for name in marketplace.__all__:
        assert getattr(marketplace, name) is not None, name
    with pytest.raises(AttributeError):
        marketplace.NoSuchThing  # noqa: B018


@pytest.fixture(scope="module")
def net(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MarketNet, NodeProc]]:
    n = MarketNet.create(anvil.rpc_url, tmp_path_factory.mktemp("api"))
    try:
        n.start_bootstrap()
        node = n.node("h1", PRICE)
        node.start()
        wait_until(lambda: node.get("/health")["peers"] >= 1, 60, "h1 to find the bootstrap")
        yield n, node
    finally:
        n.close()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_documented_script_buys_a_job(net: tuple[MarketNet, NodeProc], tmp_path: Path) -> None:
    market, node = net
    script = tmp_path / "buy.py"
    script.write_text(doc_script())
    env = {**market.env, "AGORA_ACCOUNT": "alice", "AGORA_BOOTSTRAP": market.bootstrap}
    before = market.balances()
    proc = subprocess.run([sys.executable, str(script), str(market.spec)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("settled: job 0x"), proc.stdout
    assert f"paid {PRICE} AGORA" in lines[-1], proc.stdout
    assert any(market.addresses["h1"] in ln and "asks 0.7" in ln for ln in lines), proc.stdout
    job_id = re.search(r"job (0x[0-9a-f]{64})", lines[-1]).group(1)  # type: ignore[union-attr]
    out_dir = Path(lines[-1].split("outputs in ")[1].split(",")[0])
    assert (out_dir / "settlement.json").exists() and (out_dir / "outputs.safetensors").exists()
    assert market.job(job_id).settled
    after = market.balances()
    assert delta(before, after, "alice", "total") == -to_wei(PRICE)
    assert delta(before, after, "h1", "mbal") == to_wei(PRICE)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_documented_script_refuses_missing_inputs_before_any_money_moves(
        net: tuple[MarketNet, NodeProc], tmp_path: Path) -> None:
    market, _ = net
    spec = tmp_path / "spec.yaml"
    spec.write_text(market.spec.read_text().replace(
        re.search(r"sha256:[0-9a-f]{64}", market.spec.read_text()).group(0), "sha256:" + "ab" * 32))  # type: ignore[union-attr]
    script = tmp_path / "buy.py"
    script.write_text(doc_script())
    env = {**market.env, "AGORA_ACCOUNT": "alice", "AGORA_BOOTSTRAP": market.bootstrap}
    nonce = market.market.client.w3.eth.get_transaction_count(market.addresses["alice"])
    proc = subprocess.run([sys.executable, str(script), str(spec)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 1 and "inputs not in" in proc.stderr and "ab" * 32 in proc.stderr, proc.stderr
    assert market.market.client.w3.eth.get_transaction_count(market.addresses["alice"]) == nonce
