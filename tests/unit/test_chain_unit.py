"""LocalChain helpers that need no chain process."""

from __future__ import annotations

import pytest

from marketplace.devchain import DEV_ACCOUNTS, DEV_MNEMONIC, free_port, port_is_free, rpc_call, time_travel
from marketplace.errors import RpcUnreachableError


def test_dev_accounts_are_the_mnemonic_accounts() -> None:
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    for i, (key, addr) in enumerate(DEV_ACCOUNTS):
        acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        assert acct.address == addr
        assert "0x" + acct.key.hex().removeprefix("0x") == key


def test_free_port_is_free() -> None:
    assert port_is_free(free_port())


def test_rpc_call_to_closed_port_is_unreachable() -> None:
    with pytest.raises(RpcUnreachableError):
        rpc_call(f"http://127.0.0.1:{free_port()}", "eth_chainId", timeout=1.0)


def test_time_travel_refuses_negative() -> None:
    with pytest.raises(ValueError):
        time_travel("http://127.0.0.1:1", -1)
