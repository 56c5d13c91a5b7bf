"""tensoragora marketplace: chain bindings, deployments, signed types, wallet and the `agora` CLI.

This package never imports torch; the provider agent lives in `node/` and imports this one.
"""

__version__ = "0.1.0"
