"""node.yaml: what a provider sells, at what price, with which stake. Unknown keys are errors.

Amounts are whole tokens written as strings ("1.5") so YAML never turns them into binary floats. Command-line
options and the environment (AGORA_ACCOUNT, AGORA_BOOTSTRAP) override the file; see `load_config`.
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marketplace.errors import ConfigError
from marketplace.protocol import KINDS
from marketplace.types import to_wei

Kind = Literal["inference", "train", "finetune", "evaluate", "collab"]


def _tokens(value: Any, what: str) -> str:
    """Check a whole-token amount (string or number) and return it as a canonical string."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be an amount of tokens like \"1.5\", got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a non-negative amount of tokens, got {value!r}")
    if to_wei(str(amount)) >= 1 << 96:
        raise ValueError(f"{what} {value} does not fit the contract's uint96")
    return str(value)


class NodeConfig(BaseModel):
    """One provider node. Every field has a default but `prices` must name each served kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str | None = None  # keystore name or address [env AGORA_ACCOUNT]
    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: list[str] = Field(default_factory=list)  # [env AGORA_BOOTSTRAP, comma separated]
    kinds: list[Kind] = Field(default_factory=lambda: cast(list[Kind], list(KINDS)))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prices: dict[Kind, str] = Field(default_factory=lambda: cast(dict[Kind, str], {k: "1" for k in KINDS}))
    collateral: str = "10"  # tokens locked from the stake per job
    capacity: int = Field(default=1, ge=1, le=1024)  # concurrent jobs
    min_window: int = Field(default=0, ge=0)  # shortest reveal/challenge window accepted, seconds
    counter_offers: bool = True  # bid our own price even above the announcement's max (the requester learns why)
    collab_verify: bool = True  # recompute each collab round's aggregate from the accepted updates before going on
    stake: str = "100"  # registered with on start when the account is not yet a provider
    ops_port: int = Field(default=0, ge=-1, le=65535)  # 0 = random, -1 = off
    auto_withdraw: str | None = None  # withdraw earnings once the market balance reaches this many tokens
    settle_margin_s: int = Field(default=5, ge=0)
    data_dir: Path | None = None  # default <AGORA_HOME>/node/<address>
    # Run-time estimate used to decline announcements whose run_seconds is too short: base + input / rate.
    estimate_base_s: float = Field(default=10.0, ge=0)
    estimate_mb_per_s: float = Field(default=20.0, gt=0)
    max_input_mb: int = Field(default=2048, ge=1)  # cap on what one job may make the node download

    @field_validator("collateral", "stake", mode="before")
    @classmethod
    def _amount(cls, v: Any, info: Any) -> str:
        return _tokens(v, info.field_name)

    @field_validator("auto_withdraw", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> str | None:
        return None if v is None else _tokens(v, "auto_withdraw")

    @field_validator("prices", mode="before")
    @classmethod
    def _prices(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {k: _tokens(p, f"prices.{k}") for k, p in v.items()}

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("serve at least one kind")
        if len(set(v)) != len(v):
            raise ValueError("kinds are listed twice")
        return v

    @field_validator("listen", "bootstrap")
    @classmethod
    def _multiaddrs(cls, v: Any) -> Any:
        import multiaddr

        for addr in [v] if isinstance(v, str) else v:
            try:
                multiaddr.Multiaddr(addr)
            except Exception as err:  # noqa: BLE001 - multiaddr raises several types
                raise ValueError(f"not a multiaddr: {addr!r} ({err})") from None
        return v

    @model_validator(mode="after")
    def _priced(self) -> NodeConfig:
        missing = [k for k in self.kinds if k not in self.prices]
        if missing:
            raise ValueError(f"no price for served kind(s) {', '.join(missing)}: add them under prices")
        return self

    # ------------------------------------------------------------------ in base units
    def price_wei(self, kind: str) -> int:
        return int(to_wei(self.prices[kind]))  # type: ignore[index]

    @property
    def collateral_wei(self) -> int:
        return int(to_wei(self.collateral))

    @property
    def stake_wei(self) -> int:
        return int(to_wei(self.stake))

    @property
    def auto_withdraw_wei(self) -> int | None:
        return None if self.auto_withdraw is None else int(to_wei(self.auto_withdraw))

    def device_class(self, cuda_available: bool) -> str:
        """"cuda" or "cpu": `auto` picks cuda when torch sees a GPU."""
        if self.device == "auto":
            return "cuda" if cuda_available else "cpu"
        return self.device


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())


def parse_config(data: Any, *, source: str = "node config") -> NodeConfig:
    """Validate a decoded config. Raises ConfigError naming every bad field in one line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a node config is a mapping, got {type(data).__name__}")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_problems(err)}") from None


def _add_bootstrap(data: dict[str, Any], extra: list[str]) -> None:
    """Append bootstrap peers from the environment / command line after the file's, without duplicates."""
    have = list(data.get("bootstrap") or [])
    data["bootstrap"] = have + [a for a in extra if a not in have]


def load_config(path: Path | None, *, account: str | None = None, bootstrap: list[str] | None = None,
                ops_port: int | None = None, env: dict[str, str] | None = None) -> NodeConfig:
    """The file at `path` (or the defaults), then the environment, then command-line overrides."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    source = "node config"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"cannot read node config {path}: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a node config is a mapping, got {type(loaded).__name__}")
        data = dict(loaded or {})
    if env.get("AGORA_ACCOUNT") and not data.get("account"):
        data["account"] = env["AGORA_ACCOUNT"]
    if env.get("AGORA_BOOTSTRAP"):
        from marketplace.p2p.discovery import bootstrap_from_env  # imports libp2p: only when needed

        _add_bootstrap(data, bootstrap_from_env(env["AGORA_BOOTSTRAP"]))
    if account:
        data["account"] = account
    if bootstrap:
        _add_bootstrap(data, bootstrap)
    if ops_port is not None:
        data["ops_port"] = ops_port
    return parse_config(data, source=source)


DEFAULT_YAML = """\
# tensoragora provider node (`agora node run --config node.yaml`). Unknown keys are errors.
# Amounts are whole tokens, written as strings.

# Keystore name or address (env AGORA_ACCOUNT; the password comes from AGORA_PASSWORD or --password-file).
account: null
# Where the libp2p host listens (port 0 = any free port).
listen: /ip4/127.0.0.1/tcp/0
# Bootstrap peers, full multiaddrs with /p2p/<peer id> (also env AGORA_BOOTSTRAP, comma separated).
bootstrap: []
# Job kinds to bid on: any of inference, train, finetune, evaluate, collab (rounds of collaborative training).
kinds: [inference, train, finetune, evaluate, collab]
# auto = cuda when torch sees a GPU, else cpu. Decides which job topics the node listens to.
device: auto
# Price asked per job, per kind. Announcements whose max_price is lower are declined.
prices:
  inference: "1"
  train: "5"
  finetune: "5"
  evaluate: "1"
  collab: "1"  # per accepted round of a collaborative training job
# Collateral locked from the stake for each job (slashed if the node fails it).
collateral: "10"
# Jobs run at the same time.
capacity: 1
# Shortest reveal/challenge window (seconds) this node accepts.
min_window: 0
# When our price is above a job's max price but everything else fits, still bid our price as a counter-offer:
# the requester then sees "ask more than max price (...)" instead of silence (false = decline silently).
counter_offers: true
# Collaborative training: recompute every round's aggregate from the accepted updates (costs downloading them)
# and stop working for a coordinator whose aggregate does not match.
collab_verify: true
# Stake registered on start when this account is not yet a provider (approved automatically).
stake: "100"
# Operations HTTP on 127.0.0.1: 0 = a random free port, -1 = off.
ops_port: 0
# Withdraw the market balance once it reaches this many tokens (null = never).
auto_withdraw: null
# Seconds before a chain deadline at which the node settles by itself (submit / commit / reveal).
settle_margin_s: 5
# Bids, jobs and results; default <AGORA_HOME>/node/<address>.
data_dir: null
# Run-time estimate: base seconds + input MB / rate. Announcements with a shorter run_seconds are declined.
estimate_base_s: 10
estimate_mb_per_s: 20
# The most a single job may make the node download (MB).
max_input_mb: 2048
"""
