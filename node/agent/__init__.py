"""The provider node agent (`agora node run`): bids on announced jobs, runs them in the sandbox, settles on chain.

    config.py    node.yaml (pydantic, unknown keys are errors) and `agora node init`'s commented default
    store.py     SQLite (WAL) record of bids and jobs, so a killed node resumes every unsettled job
    strategy.py  the pluggable bidding policy (`TableStrategy` prices from the config table)
    ops.py       /health, /metrics (Prometheus), /jobs on 127.0.0.1
    agent.py     the trio program tying host, gossip, chain, sandbox and store together

The wire protocol it speaks is docs/market-protocol.md / marketplace.protocol.
"""
