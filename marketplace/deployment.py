"""Deployment files: `deployments/<chainId>.json` records where the contracts live on one chain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from marketplace.errors import DeploymentError
from marketplace.fsutil import atomic_write_text
from marketplace.models import Model, validation_message

DEPLOYMENT_VERSION: Final = 1


@dataclass(frozen=True, kw_only=True)
class MarketParams:
    """Deploy-time constants. Defaults suit a local dev chain; every one is documented in the README."""

    min_stake: int = 100 * 10**18  # tokens a provider must bond to register and take jobs
    unbonding_delay: int = 3600  # seconds between requestUnstake and withdrawStake
    min_run: int = 10  # a job's result deadline is at least this far ahead ...
    max_run: int = 30 * 24 * 3600  # ... and at most this far
    min_window: int = 5  # challenge / reveal window bounds, seconds
    max_window: int = 7 * 24 * 3600
    initial_supply: int = 1_000_000 * 10**18  # minted to the deployer when we deploy our own token
    dev_funding: int = 100_000 * 10**18  # tokens sent to each dev account on dev chains


class Deployment(Model):
    """Addresses of one chain's contracts. `collab` (CollabMarket) is None in files written before it existed:
    they still load, and only collaborative jobs need a redeploy."""

    chain_id: int
    token: str
    registry: str
    market: str
    block: int
    deployer: str
    artifact_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    collab: str | None = None
    version: Literal[1] = DEPLOYMENT_VERSION

    def save(self, directory: Path) -> Path:
        return atomic_write_text(Path(directory) / f"{self.chain_id}.json", self.to_json_text())

    @classmethod
    def load(cls, directory: Path, chain_id: int) -> Deployment:
        """Read `directory/<chain_id>.json`.

        Raises DeploymentError when the file is missing or unreadable.
        """
        path = directory / f"{chain_id}.json"
        if not path.exists():
            raise DeploymentError(
                f"no deployment for chain {chain_id} in {path} (run `agora deploy --rpc URL` first, "
                f"or point --deployments / AGORA_DEPLOYMENTS at the right folder)")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("version") != DEPLOYMENT_VERSION:
                raise DeploymentError(f"{path}: unsupported deployment file version {data.get('version')!r}")
            return cls.from_json(data)
        except ValidationError as err:
            raise DeploymentError(f"{path} is not a valid deployment file: {validation_message(err)}") from None
        except (OSError, ValueError, TypeError) as err:
            raise DeploymentError(f"{path} is not a valid deployment file: {err}") from None
