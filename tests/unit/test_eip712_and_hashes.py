"""The Python mirrors of the contract's hashes agree with the contract itself, and reverts decode.

Runs the real JobMarket bytecode in-process (web3's EthereumTesterProvider over py-evm): no chain process.
Checked against the contract: the EIP-712 bid digest (`bidDigest`), the commit and result digests, the job
hash (`hashJob`, jobs with workers and verifiers), `commitmentOf`, and the id `openJob` gives a job.
`marketplace.revert.decode_revert` is checked on hand-built payloads.
"""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector as selector
from web3 import EthereumTesterProvider, Web3
from web3.logs import DISCARD

from marketplace import eip712
from marketplace.client import ChainClient
from marketplace.deployer import deploy
from marketplace.eip712 import (
    COMMIT_TYPES,
    RESULT_TYPES,
    bid_digest,
    recover_bid_signer,
    sign_bid,
    typed_digest,
)
from marketplace.errors import ConfigError, InsufficientFundsError, TransactionRevertedError
from marketplace.revert import DecodedError, decode_revert, to_agora_error
from marketplace.types import (
    HASH_MASK,
    Assignment,
    Bid,
    Job,
    JobParams,
    JobPhase,
    commitment_for,
    job_id_for,
    to_wei,
)

ADDR = [Account.from_key(bytes([i + 1]) * 32).address for i in range(8)]


@pytest.fixture(scope="module")
def chain() -> SimpleNamespace:
    from eth_tester import EthereumTester, PyEVMBackend

    backend = PyEVMBackend()
    w3 = Web3(EthereumTesterProvider(EthereumTester(backend)))
    deployer = Account.from_key(backend.account_keys[0].to_bytes())
    deployment = deploy(w3, deployer)
    client = ChainClient(w3, deployment, account=deployer)
    return SimpleNamespace(w3=w3, deployer=deployer, deployment=deployment, client=client,
                           market=client.market, chain_id=deployment.chain_id, address=deployment.market)


def _bid(**over) -> Bid:
    fields = {"spec_hash": os.urandom(32), "requester": ADDR[0], "provider": ADDR[1], "price": to_wei(3),
              "collateral": to_wei(30), "run_seconds": 600, "expiry": 2**40, "nonce": 7}
    fields.update(over)
    return Bid(**fields)


# ---------------------------------------------------------------- EIP-712


@pytest.mark.parametrize("bid", [
    _bid(),
    _bid(price=0, collateral=0, run_seconds=0, expiry=0, nonce=0),
    _bid(price=2**96 - 1, collateral=2**96 - 1, run_seconds=2**32 - 1, expiry=2**64 - 1, nonce=2**256 - 1),
    _bid(requester=ADDR[5], provider=ADDR[6], spec_hash=b"\x00" * 32),
])
def test_bid_digest_matches_contract(chain: SimpleNamespace, bid: Bid) -> None:
    ours = bid_digest(bid, chain_id=chain.chain_id, market=chain.address)
    assert ours == bytes(chain.market.functions.bidDigest(bid.as_abi()).call())


def test_bid_digest_binds_chain_and_market(chain: SimpleNamespace) -> None:
    bid = _bid()
    on_chain = bytes(chain.market.functions.bidDigest(bid.as_abi()).call())
    assert bid_digest(bid, chain_id=1, market=chain.address) != on_chain
    mine = eip712.domain(chain.chain_id, chain.address)
    eip712.set_domain(chain.deployment.registry, mine["name"], mine["version"])  # same name, other contract
    assert bid_digest(bid, chain_id=chain.chain_id, market=chain.deployment.registry) != on_chain


def test_domain_is_read_from_the_market_and_cached(chain: SimpleNamespace) -> None:
    name, version, chain_id, verifying = chain.market.functions.eip712Domain().call()[1:5]
    assert eip712.read_domain(chain.w3, chain.address) == eip712.domain_of(name, version, chain_id, verifying)
    assert eip712.domain(chain.chain_id, chain.address) == eip712.domain_of(name, version, chain.chain_id,
                                                                            chain.address)
    calls = []
    real = eip712.read_domain
    try:
        eip712.read_domain = lambda *a: calls.append(a) or real(*a)  # type: ignore[assignment]
        eip712.domain(chain.chain_id, chain.address)
    finally:
        eip712.read_domain = real  # type: ignore[assignment]
    assert calls == []  # cached per market address: no second eth_call
    # A contract without ERC-5267 (the token), and an address nobody connected, are refused, not guessed.
    with pytest.raises(ConfigError, match="eip712Domain"):
        eip712.read_domain(chain.w3, chain.deployment.token)
    with pytest.raises(ConfigError, match="unknown"):
        eip712.domain(chain.chain_id, ADDR[6])


def test_signed_bid_recovers_provider() -> None:
    key = bytes([9]) * 32
    provider = Account.from_key(key).address
    bid = _bid(provider=provider)
    eip712.set_domain(ADDR[7], "SomeMarket", "2")  # offline: no contract at ADDR[7], the domain is stated
    signed = sign_bid(key, bid, chain_id=31337, market=ADDR[7])
    assert recover_bid_signer(signed, chain_id=31337, market=ADDR[7]) == provider
    assert recover_bid_signer(signed, chain_id=1, market=ADDR[7]) != provider
    with pytest.raises(ValueError, match="cannot sign a bid for provider"):
        sign_bid(key, _bid(provider=ADDR[1]), chain_id=31337, market=ADDR[7])


def test_commit_and_result_digests_match_contract(chain: SimpleNamespace) -> None:
    job_id, commitment, result = os.urandom(32), os.urandom(32), os.urandom(32)
    domain = {"chain_id": chain.chain_id, "market": chain.address}
    assert typed_digest(COMMIT_TYPES, {"jobId": job_id, "index": 5, "commitment": commitment}, **domain) == \
        bytes(chain.market.functions.commitDigest(job_id, 5, commitment).call())
    assert typed_digest(RESULT_TYPES, {"jobId": job_id, "result": result}, **domain) == \
        bytes(chain.market.functions.resultDigest(job_id, result).call())


# ---------------------------------------------------------------- job hash, commitments, ids


def _assignments(rng: random.Random, n: int) -> tuple[Assignment, ...]:
    return tuple(Assignment(rng.choice(ADDR), rng.randrange(2**96), rng.randrange(2**96)) for _ in range(n))


def _jobs() -> list[Job]:
    rng = random.Random(1234)
    jobs = [
        Job(requester=ADDR[0], spec_hash=b"\x11" * 32, deadline=1, window=5, replicas=1, phase=JobPhase.OPEN,
            budget=to_wei(5)),
        Job(requester=ADDR[0], spec_hash=b"\x11" * 32, deadline=10**9, window=60, replicas=1,
            phase=JobPhase.SUBMITTED, result=b"\x42" * 32, challenge_end=10**9 + 60,
            workers=(Assignment(ADDR[1], to_wei(1), to_wei(10)),)),
        Job(requester=ADDR[2], spec_hash=b"\x22" * 32, deadline=2**64 - 1, window=2**32 - 1, replicas=1,
            phase=JobPhase.DISPUTED, result=b"\x42" * 32, challenge_end=2**64 - 1,
            workers=(Assignment(ADDR[1], to_wei(1), to_wei(10)),),
            verifiers=(Assignment(ADDR[3], to_wei(2), to_wei(5)), Assignment(ADDR[4], to_wei(2), to_wei(5)))),
    ]
    for k in (2, 3, 15):
        jobs.append(Job(requester=rng.choice(ADDR), spec_hash=rng.randbytes(32), deadline=rng.randrange(2**64),
                        window=rng.randrange(2**32), replicas=k, phase=JobPhase(rng.randrange(1, 5)),
                        budget=rng.randrange(2**96), result=rng.randbytes(32), challenge_end=rng.randrange(2**64),
                        workers=_assignments(rng, k), verifiers=_assignments(rng, rng.randrange(0, 5))))
    return jobs


@pytest.mark.parametrize("job", _jobs(), ids=lambda j: f"{j.phase.name}-w{len(j.workers)}-v{len(j.verifiers)}")
def test_job_hash_matches_contract(chain: SimpleNamespace, job: Job) -> None:
    assert job.slot_hash() == chain.market.functions.hashJob(job.as_abi()).call()
    assert job.slot_hash() & ((1 << 64) - 1) == 0
    # Any field change changes the hash (what makes a tampered job fail with MarketJobMismatch).
    assert job.evolve(window=(job.window + 1) % 2**32).slot_hash() != job.slot_hash()


def test_commitment_matches_contract(chain: SimpleNamespace) -> None:
    for _ in range(3):
        job_id, result, salt = os.urandom(32), os.urandom(32), os.urandom(32)
        provider = random.choice(ADDR)
        assert commitment_for(job_id, provider, result, salt) == \
            bytes(chain.market.functions.commitmentOf(job_id, provider, result, salt).call())
        assert commitment_for(job_id, provider, result, salt) != commitment_for(job_id, ADDR[0] if provider !=
                                                                                ADDR[0] else ADDR[1], result, salt)


def test_job_id_matches_open_job(chain: SimpleNamespace) -> None:
    client = chain.client
    client.transact(client.token.functions.approve(chain.address, to_wei(10)), action="approve")
    salt = os.urandom(32)
    now = client.timestamp()
    params = JobParams(spec_hash=os.urandom(32), salt=salt, deadline=now + 600, window=60, replicas=2,
                       budget=to_wei(4))
    fn = chain.market.functions.openJob(params.as_abi(), [])
    pending = chain.w3.eth.block_number + 1  # eth-tester mines one block per transaction
    assert bytes(fn.call({"from": chain.deployer.address}, block_identifier="pending")) == \
        job_id_for(chain.deployer.address, salt, pending)  # the return value
    receipt = client.transact(fn, action="open job").receipt
    expected = job_id_for(chain.deployer.address, salt, receipt["blockNumber"])
    (event,) = chain.market.events.JobOpened().process_receipt(receipt, errors=DISCARD)
    assert bytes(event["args"]["jobId"]) == expected  # and the id it really used
    # The job the Python side rebuilds for it hashes to the stored slot.
    job = Job(requester=chain.deployer.address, spec_hash=params.spec_hash, deadline=params.deadline,
              window=params.window, replicas=2, phase=JobPhase.OPEN, budget=params.budget)
    slot = chain.market.functions.jobSlot(expected).call()
    assert slot & HASH_MASK == job.slot_hash()
    assert job_id_for(ADDR[3], salt, receipt["blockNumber"]) != expected
    assert job_id_for(chain.deployer.address, salt, receipt["blockNumber"] + 1) != expected  # never reused


# ---------------------------------------------------------------- revert decoding


def _payload(signature: str, types: list[str], values: list) -> bytes:
    return selector(signature) + abi_encode(types, values)


def test_decode_custom_error() -> None:
    data = _payload("MarketBidExpired(address,uint64,uint256)", ["address", "uint64", "uint256"],
                    [ADDR[2], 1_700_000_000, 1_700_000_100])
    decoded = decode_revert(data)
    assert decoded == DecodedError("MarketBidExpired", {"provider": ADDR[2], "expiry": 1_700_000_000,
                                                        "now": 1_700_000_100})
    # The same payload as hex text, and as some nodes word it.
    assert decode_revert("0x" + data.hex()) == decoded
    assert decode_revert("Reverted 0x" + data.hex()) == decoded
    assert str(decoded) == f"MarketBidExpired(provider={ADDR[2]}, expiry=1700000000, now=1700000100)"


def test_decode_errors_of_every_contract() -> None:
    registry = decode_revert(_payload("RegistryStillUnbonding(uint64,uint256)", ["uint64", "uint256"], [5, 4]))
    assert registry == DecodedError("RegistryStillUnbonding", {"readyAt": 5, "now": 4})
    token = decode_revert(_payload("TokenFaucetTooMuch(uint256,uint256)", ["uint256", "uint256"], [2, 1]))
    assert token == DecodedError("TokenFaucetTooMuch", {"amount": 2, "max": 1})
    job_id = os.urandom(32)
    phase = decode_revert(_payload("MarketWrongPhase(bytes32,uint8)", ["bytes32", "uint8"], [job_id, 3]))
    assert phase == DecodedError("MarketWrongPhase", {"jobId": job_id, "phase": 3})


def test_decode_error_string() -> None:
    decoded = decode_revert(_payload("Error(string)", ["string"], ["ERC20: nope"]))
    assert decoded == DecodedError("Error", {"reason": "ERC20: nope"})


def test_decode_panic() -> None:
    decoded = decode_revert(_payload("Panic(uint256)", ["uint256"], [0x11]))
    assert decoded is not None and decoded.name == "Panic"
    assert decoded.args == {"code": 0x11, "meaning": "arithmetic overflow or underflow"}
    assert decode_revert(_payload("Panic(uint256)", ["uint256"], [0x99])).args["meaning"] == "unknown panic"


@pytest.mark.parametrize("garbage", [
    None, b"", b"\x01\x02\x03", "0x", "0x1234", "not hex at all", "0xzzzzzzzz",
    b"\xde\xad\xbe\xef" + b"\x00" * 32,  # unknown selector
    "Reverted",
])
def test_decode_garbage_is_none(garbage) -> None:
    assert decode_revert(garbage) is None


def test_decode_known_selector_with_malformed_args_keeps_the_name() -> None:
    decoded = decode_revert(selector("MarketBidExpired(address,uint64,uint256)") + b"\x01")
    assert decoded == DecodedError("MarketBidExpired", {})


def test_to_agora_error_maps_funds_errors_with_amounts() -> None:
    def exc(data: bytes) -> Exception:
        e = Exception("execution reverted")
        e.data = "0x" + data.hex()  # type: ignore[attr-defined]
        return e

    allowance = _payload("MarketInsufficientAllowance(address,uint256,uint256)", ["address", "uint256", "uint256"],
                         [ADDR[1], to_wei("0.5"), to_wei(2)])
    err = to_agora_error(exc(allowance), action="open job")
    assert isinstance(err, InsufficientFundsError)
    assert "0.5 AGORA" in str(err) and "2 AGORA" in str(err) and ADDR[1] in str(err)
    other = _payload("MarketZeroAmount()", [], [])
    err = to_agora_error(exc(other), action="withdraw")
    assert isinstance(err, TransactionRevertedError) and err.error_name == "MarketZeroAmount"


def test_revert_through_client_on_eth_tester_is_decoded(chain: SimpleNamespace) -> None:
    with pytest.raises(TransactionRevertedError) as info:
        chain.client.transact(chain.market.functions.deposit(0), action="deposit")
    assert info.value.error_name == "MarketZeroAmount"
