"""A test peer in its own process: `python _peer.py KEYFILE ETH_KEY CHAIN_ID`.

Serves `/agora/echo/1` (echo), `/agora/record/1` (its peer record as JSON, signed by ETH_KEY), `/agora/boom/1`
(a handler that raises) and the built-in ping; prints its multiaddr (with /p2p/<id>) on one stdout line, then runs until killed or stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from marketplace.p2p import PeerRecord, load_or_create_key, open_host

ECHO = "/agora/echo/1"
RECORD = "/agora/record/1"
BOOM = "/agora/boom/1"


async def main(key_file: str, eth_key: str, chain_id: int) -> None:
    key = load_or_create_key(Path(key_file))
    async with open_host(key=key) as node:
        record = json.dumps(PeerRecord.sign(eth_key, node.peer_id, chain_id).to_json()).encode()

        async def echo(payload: bytes, peer: object) -> bytes:
            return payload

        async def give_record(payload: bytes, peer: object) -> bytes:
            return record

        async def boom(payload: bytes, peer: object) -> bytes:
            raise RuntimeError("handler bug")

        node.serve(ECHO, echo)
        node.serve(BOOM, boom)
        node.serve(RECORD, give_record)
        print(node.addr, flush=True)
        # Exit when the parent goes away (stdin closes) so no peer outlives its test.
        await trio.wrap_file(sys.stdin).read()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
