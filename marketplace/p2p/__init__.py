"""The libp2p layer shared by provider and requester: identity, framing, host (noise only, yamux,
request/response, ping), discovery (bootstrap + rendezvous, bounded peer set) and liveness."""

from marketplace.errors import (
    FrameError,
    FrameTimeoutError,
    FrameTooLargeError,
    P2PError,
    PeerIdentityError,
    PeerRecordError,
    PeerTimeoutError,
    PeerUnreachableError,
    PingMismatchError,
)
from marketplace.protocol import PeerRecord, verify_peer_record

from .discovery import NAMESPACE, DiscoveryStats, PeerMaintainer, bootstrap_from_env, maintain_peers
from .framing import MAX_FRAME, read_frame, write_frame
from .host import PING_PROTOCOL, P2PHost, open_host, peer_info
from .identity import identity_key_path, load_or_create_key, peer_id_of
from .liveness import Liveness, LivenessStats

__all__ = [
    "MAX_FRAME", "PING_PROTOCOL", "FrameError", "FrameTimeoutError", "FrameTooLargeError", "P2PError", "P2PHost",
    "PeerIdentityError", "PeerRecord", "PeerRecordError", "PeerTimeoutError", "PeerUnreachableError",
    "PingMismatchError", "identity_key_path", "load_or_create_key", "open_host", "peer_id_of", "peer_info",
    "read_frame", "verify_peer_record", "write_frame",
    "NAMESPACE", "DiscoveryStats", "Liveness", "LivenessStats", "PeerMaintainer", "bootstrap_from_env",
    "maintain_peers",
]
