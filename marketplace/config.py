"""Settings read from the environment, in one place. Every variable is `AGORA_*`.

`load_settings()` is the entry point: it reads the environment each time it is called (the CLI's global options
`--rpc`, `--deployments`, `--account` override the matching fields for one command). An empty variable counts as
unset. Constructing `Settings(...)` with keywords overrides the environment for those fields only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RPC = "http://127.0.0.1:8545"
DEV_CHAIN_IDS = frozenset({31337, 1337})


def _default_home() -> Path:
    return Path.home() / ".agora"


class Settings(BaseSettings):
    """Documented defaults; each field is overridden by the environment variable named in its description."""

    model_config = SettingsConfigDict(env_prefix="AGORA_", env_ignore_empty=True, frozen=True, extra="ignore",
                                      populate_by_name=True)

    rpc_url: str = Field(DEFAULT_RPC, validation_alias="AGORA_RPC",
                         description="JSON-RPC URL of the chain [AGORA_RPC]")
    home: Path = Field(default_factory=_default_home,
                       description="Agora home: keystores/ and local state live here [AGORA_HOME, default ~/.agora]")
    deployments_dir: Path = Field(Path("deployments"),
                                  validation_alias="AGORA_DEPLOYMENTS",
                                  description="Folder of <chainId>.json deployment files [AGORA_DEPLOYMENTS]")
    password: str | None = Field(None, repr=False,
                                 description="Keystore password for non-interactive use [AGORA_PASSWORD]")
    account: str | None = Field(None, description="Default keystore name or address [AGORA_ACCOUNT]")

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def keystore_dir(self) -> Path:
        return self.home / "keystores"


def load_settings() -> Settings:
    """The settings as the environment gives them now."""
    return Settings()
