"""The provider's libp2p identity and the signed record binding its peer id to an Ethereum address.

- `load_or_create_key(path)`: a secp256k1 libp2p key pair kept as hex in one file (mode 0600, folder 0700).
  `identity_key_path(keystore_dir, address)` names that file: `<keystore_dir>/<address>.p2p.key`.
- `PeerRecord`: the account signs (EIP-191 `personal_sign`) `tensoragora-peer:<peer id base58>:<chain id>`;
  `verify_peer_record(record, peer_id)` recovers the signer and returns its checksum address, or raises
  `PeerRecordError` when the record is malformed, names another peer/chain, or was signed by another key.

libp2p's own secp256k1 signatures are DER over SHA-256 and not what a contract verifies, hence the record.
"""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.id import ID

from marketplace.errors import PeerIdentityError

IDENTITY_FILE = "p2p-identity.key"


def identity_key_path(keystore_dir: Path, address: str | None = None) -> Path:
    """Where the libp2p key lives: `<keystore_dir>/<address>.p2p.key`, one per account, beside its keystore
    (docs/market-protocol.md, "Identities"); without an address, the host-wide `<keystore_dir>/../p2p-identity.key`."""
    if address is not None:
        from eth_utils import to_checksum_address

        return Path(keystore_dir).expanduser() / f"{to_checksum_address(address)}.p2p.key"
    return Path(keystore_dir).expanduser().parent / IDENTITY_FILE


def load_or_create_key(path: Path) -> KeyPair:
    """Load the secp256k1 key pair stored (hex secret) at `path`, or create one there with mode 0600."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pair = create_new_key_pair()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: use theirs
            return load_or_create_key(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(pair.private_key.to_bytes().hex() + "\n")
        return pair
    except OSError as err:
        raise PeerIdentityError(f"cannot read libp2p identity {path}: {err.strerror or err}") from None
    try:
        secret = bytes.fromhex(text)
        if len(secret) != 32:
            raise ValueError("not 32 bytes")
        return create_new_key_pair(secret)
    except ValueError:
        raise PeerIdentityError(f"{path} is not a libp2p secp256k1 identity (64 hex characters)") from None


def peer_id_of(key: KeyPair) -> ID:
    return ID.from_pubkey(key.public_key)


