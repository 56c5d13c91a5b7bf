"""The requester side of the market: announce, rank bids, open, serve inputs, verify results, settle.

`Requester` (a facade over one module per protocol phase: `bidding`, `opening`, `session`, `serving`,
`recovery`; see `core`) for programs, `agora job submit/watch/resume` for people; `ranking` is pure policy and
`store` the durable SQLite memory. No torch anywhere here.
"""

from marketplace.errors import JobFailedError, NoAcceptableBidsError
from marketplace.requester.core import BidReceived, BidWindow, Extension, SubmitOutcome, Winner
from marketplace.requester.engine import Requester
from marketplace.requester.ranking import Explanation, Offer, ProviderFacts, effective_price, rank
from marketplace.requester.recovery import OpeningFacts, opening_verdict
from marketplace.requester.session import JobSession
from marketplace.requester.store import RequesterStore, store_path
from marketplace.requester.sync import resume_sync, run_trio, submit_sync

__all__ = [
    "BidReceived", "BidWindow", "Explanation", "Extension", "JobFailedError", "JobSession", "NoAcceptableBidsError",
    "Offer", "OpeningFacts", "ProviderFacts", "Requester", "RequesterStore", "SubmitOutcome", "Winner",
    "effective_price", "opening_verdict", "rank", "resume_sync", "run_trio", "store_path", "submit_sync",
]
