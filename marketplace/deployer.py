"""Deploy token, registry, market and collab market to an EVM JSON-RPC endpoint; write the deployment file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.client import ChainClient
from marketplace.compiled import artifact_hash, load_artifact
from marketplace.config import DEV_CHAIN_IDS
from marketplace.deployment import Deployment, MarketParams
from marketplace.errors import ConfigError

ProgressFn = Callable[[str], None]


def create_address(sender: str, nonce: int) -> str:
    """The address a CREATE from `sender` at `nonce` deploys to: keccak(rlp([sender, nonce]))[12:]."""
    import rlp
    from eth_utils import keccak, to_bytes

    return Web3.to_checksum_address(keccak(rlp.encode([to_bytes(hexstr=sender), nonce]))[12:])


def _deploy_contract(client: ChainClient, name: str, *args: Any) -> str:
    art = load_artifact(name)
    factory = client.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    result = client.transact(factory.constructor(*args), action=f"deploy {name}")
    address = result.receipt["contractAddress"]
    if not address:
        raise ConfigError(f"deploy {name}: receipt has no contract address")
    return Web3.to_checksum_address(address)


def deploy(w3: Web3, deployer: LocalAccount, *, params: MarketParams | None = None, token: str | None = None,
           fund: Sequence[str] = (), progress: ProgressFn | None = None) -> Deployment:
    """Deploy the stack (token unless given, registry, JobMarket, CollabMarket) with `deployer` as sender.

    `token`: use this existing ERC-20 instead of deploying AgoraToken. `fund`: addresses that get
    `params.dev_funding` tokens each (dev chains only: the deployer holds the initial supply).
    Raises TransactionRevertedError, InsufficientFundsError, RpcUnreachableError.
    """
    params = params or MarketParams()
    say = progress or (lambda _msg: None)
    chain_id = w3.eth.chain_id
    dev = chain_id in DEV_CHAIN_IDS
    start_block = w3.eth.block_number
    placeholder = Deployment(chain_id=chain_id, token="0x" + "00" * 20, registry="0x" + "00" * 20,
                             market="0x" + "00" * 20, block=start_block, deployer=deployer.address,
                             artifact_hash="")
    client = ChainClient(w3, placeholder, account=deployer)
    if token is None:
        say("deploying AgoraToken")
        token = _deploy_contract(client, "AgoraToken", deployer.address, params.initial_supply, dev)
    token = Web3.to_checksum_address(token)
    # The registry names its market immutably: predict the market's CREATE address (the deployer's next nonce).
    nonce = w3.eth.get_transaction_count(deployer.address, "pending")
    predicted = create_address(deployer.address, nonce + 1)
    say("deploying ProviderRegistry")
    registry = _deploy_contract(client, "ProviderRegistry", token, params.min_stake, params.unbonding_delay, predicted)
    say("deploying JobMarket")
    market = _deploy_contract(client, "JobMarket", token, registry, params.min_run, params.max_run,
                              params.min_window, params.max_window)
    if market != predicted:
        raise ConfigError(f"market deployed at {market}, but the registry was bound to {predicted}: another "
                          f"transaction from {deployer.address} interleaved; deploy again from an idle account")
    # Deployed after the market so the registry's predicted market address (a nonce) is unchanged.
    say("deploying CollabMarket")
    collab = _deploy_contract(client, "CollabMarket", token)
    deployment = Deployment(chain_id=chain_id, token=token, registry=registry, market=market,
                            block=start_block, deployer=deployer.address, artifact_hash=artifact_hash(),
                            params=asdict(params), collab=collab)
    client = ChainClient(w3, deployment, account=deployer)
    if fund and dev:
        for address in fund:
            if Web3.to_checksum_address(address) == deployer.address:
                continue
            say(f"funding {address}")
            client.transact(client.token.functions.transfer(Web3.to_checksum_address(address),
                                                            params.dev_funding), action="fund dev account")
    return deployment
