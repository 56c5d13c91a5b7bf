"""A REAL provider node (`agora node run ...`) with one misbehaviour patched into node.agent.jobs.JobRunner.

Usage: python tests/integration/_adversary.py MODE node run --config ... (everything after MODE is the `agora`
command line). MODE is one of

- `wrong-result`: the job runs for real, then the stored result hash is replaced by another 32-byte value
  before anything is committed, so the node commits and reveals a result the honest majority does not share.
- `copy-commitment`: the node never sends its own CommitMsg. It waits until another participant's commitment
  is on chain, commits that very value for its own index (Market.commit), and then tries to reveal normally
  (RevealMsg to the requester, then Market.reveal by itself): the copy does not open with its own address,
  result and salt, so the requester refuses it and the chain reverts the reveal.

- `poison-update`: in collaborative training, every update the node sends is the honest one pushed 1000 times
  further from the global model (global + 1000 x (trained - global)): a model-poisoning participant. The
  coordinator must reject it (norm bound) and not pay for it.

Only these JobRunner / training functions are wrapped; everything else (bidding, fetching, sandbox, fallbacks) is the
product's code, so the test exercises the market's defences against a real node process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

from eth_utils import keccak

from node.agent.jobs import JobRunner
from node.agent.store import SENT_COMMIT

log = logging.getLogger("agora.adversary")


def patch_wrong_result() -> None:
    """After the real execution, store keccak(result) instead of the result (before any commitment exists)."""
    original = JobRunner.execute

    async def execute(self: Any, row: Any) -> None:
        await original(self, row)
        done = self.store.job(row.job_id)
        if done is not None and done.state == "computed" and done.result:
            wrong = "0x" + keccak(bytes.fromhex(done.result[2:])).hex()
            self.store.update_job(row.job_id, result=wrong)
            log.warning("ADVERSARY wrong-result: job %s result %s replaced by %s", row.job_id, done.result, wrong)

    JobRunner.execute = execute  # type: ignore[method-assign]


def patch_copy_commitment() -> None:
    """Skip the CommitMsg; once another participant's commitment is on chain, commit a copy of it as ours."""
    original = JobRunner._settle_replicated

    async def settle(self: Any, row: Any, view: Any, now: int, margin: int) -> None:
        bit = 1 << row.idx
        if not view.committed_mask & bit:
            row.sent |= SENT_COMMIT  # the honest path below never sends our own commitment
            self.store.update_job(row.job_id, sent=row.sent)
            theirs = {i: c for i, c in view.commitments.items() if i != row.idx}
            if not theirs or now > view.job.deadline:
                return
            index, copied = min(theirs.items())
            log.warning("ADVERSARY copy-commitment: job %s copies participant %d's commitment", row.job_id, index)
            await self.io.send(self.market.commit, bytes.fromhex(row.job_id[2:]), row.idx, bytes(copied))
            self.store.update_job(row.job_id, state="committed")
            return
        await original(self, row, view, now, margin)  # reveal normally: the chain must refuse it

    JobRunner._settle_replicated = settle  # type: ignore[method-assign]


def patch_poison_update() -> None:
    """Scale each collab update's distance from the global model by 1000 (re-encoded, so its blob id is honest)."""
    import node.runtime.collab as collab
    from marketplace.blobs import blob_id_of
    from marketplace.collab.aggregate import encode
    from marketplace.tensors import load_tensors

    original = collab.train_round

    def train_round(sandbox: Any, spec: Any, global_blob: str, shard: dict, out_dir: Any) -> Any:
        upd = original(sandbox, spec, global_blob, shard, out_dir)
        start = load_tensors(sandbox.store.get_bytes(global_blob))
        trained = load_tensors(upd.blob_bytes)
        poisoned = {k: (start[k] + 1000.0 * (v - start[k])).astype(v.dtype) for k, v in trained.items()}
        data = encode(poisoned)
        log.warning("ADVERSARY poison-update: round update %s replaced by a x1000 one", upd.blob_id[:19])
        return dataclasses.replace(upd, blob_bytes=data, blob_id=blob_id_of(data))

    collab.train_round = train_round  # type: ignore[assignment]


PATCHES = {"wrong-result": patch_wrong_result, "copy-commitment": patch_copy_commitment,
           "poison-update": patch_poison_update}


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AGORA_ADVERSARY", "")
    if mode not in PATCHES:
        raise SystemExit(f"usage: _adversary.py {{{'|'.join(PATCHES)}}} node run ...")
    PATCHES[mode]()
    from marketplace.cli import main as agora

    sys.argv = ["agora", *sys.argv[2:]]
    agora()


if __name__ == "__main__":
    main()
