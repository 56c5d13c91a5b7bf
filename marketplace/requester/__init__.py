"""The requester side of the market: announce, rank bids, open, serve inputs, verify results, settle.

`Requester` (engine) for programs, `agora job submit/watch/resume` for people; `ranking` is pure policy and
`store` the durable SQLite memory. No torch anywhere here.
"""

from marketplace.requester.engine import (
    JobFailedError,
    NoAcceptableBidsError,
    Requester,
    SubmitOutcome,
    resume_sync,
    submit_sync,
)
from marketplace.requester.ranking import Explanation, Offer, ProviderFacts, effective_price, rank
from marketplace.requester.store import RequesterStore, store_path

__all__ = [
    "Explanation", "JobFailedError", "NoAcceptableBidsError", "Offer", "ProviderFacts", "Requester",
    "RequesterStore", "SubmitOutcome", "effective_price", "rank", "resume_sync", "store_path", "submit_sync",
]
