"""Settings read from the environment, in one place. Every variable is `AGORA_*`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RPC = "http://127.0.0.1:8545"
DEV_CHAIN_IDS = frozenset({31337, 1337})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Documented defaults; each field is overridden by the environment variable in its comment."""

    rpc_url: str = DEFAULT_RPC  # AGORA_RPC
    home: Path = Path.home() / ".agora"  # AGORA_HOME: keystores/ and state live here
    deployments_dir: Path = Path("deployments")  # AGORA_DEPLOYMENTS
    password: str | None = None  # AGORA_PASSWORD: keystore password for non-interactive use
    account: str | None = None  # AGORA_ACCOUNT: default keystore name or address

    @property
    def keystore_dir(self) -> Path:
        return self.home / "keystores"


def load_settings() -> Settings:
    env = os.environ
    return Settings(
        rpc_url=env.get("AGORA_RPC", DEFAULT_RPC),
        home=Path(env["AGORA_HOME"]).expanduser() if env.get("AGORA_HOME") else Path.home() / ".agora",
        deployments_dir=Path(env.get("AGORA_DEPLOYMENTS", "deployments")),
        password=env.get("AGORA_PASSWORD"),
        account=env.get("AGORA_ACCOUNT"),
    )
