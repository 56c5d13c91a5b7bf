"""The provider node agent (`agora node run`): bids on announced jobs, runs them in the sandbox, settles on chain.

    config.py    node.yaml (pydantic, unknown keys are errors) and `agora node init`'s commented default
    store.py     SQLite (WAL) record of bids and jobs, so a killed node resumes every unsettled job
    strategy.py  the pluggable bidding policy (`TableStrategy` prices from the config table)
    ops.py       /health, /metrics (Prometheus), /jobs on 127.0.0.1
    agent.py     `Agent`: builds the shared context and one object per phase, runs the node until a signal
    context.py   `NodeContext`: what every phase shares (config, account, store, blobs, metrics, chain layer,
                 host, sandbox) and the node's chain clock
    device.py    the device the node advertises, measured at start
    bidding.py   adverts, announcement validation, funds checks, strategy, signed bids
    jobs.py      claims (Assigned message or chain logs), the chain loop, driving each job to settlement
    collab.py    collaborative training participants and the claims of their receipts
    serving.py   the assign / collab / blob request handlers

The wire protocol it speaks is docs/market-protocol.md / marketplace.protocol.
"""
