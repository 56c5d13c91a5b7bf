"""tensoragora provider node (p2p host, bidding, sandboxed execution). Imports `marketplace`, never the reverse."""
