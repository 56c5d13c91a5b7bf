"""Encrypted keystores (Web3 Secret Storage v3), interoperable with geth and `cast wallet`.

Each account lives in `<keystore_dir>/<name>.json` (mode 0600, folder 0700), encrypted with scrypt at the
standard work factor. Passwords come from a file, `AGORA_PASSWORD` or a hidden prompt, never from argv.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_keyfile.exceptions import EthKeyfileValueError
from eth_utils import ValidationError, is_hex_address, to_checksum_address

from marketplace.errors import WalletError, WrongPasswordError
from marketplace.models import Model

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from marketplace.config import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_HD_PATH = "m/44'/60'/0'/0/{index}"
# Work factor for new keystores. None = eth_account's standard scrypt (n=262144, ~0.5 s); tests lower it.
DEFAULT_ITERATIONS: int | None = None


class Keystore(Model):
    """One keystore file: its name (file stem), checksum address and path."""

    name: str
    address: str
    path: Path


# ---------------------------------------------------------------- reading and writing files
def check_name(name: str) -> None:
    """Raise WalletError unless `name` is 1-64 letters, digits, '-' or '_'."""
    if not NAME_RE.match(name):
        raise WalletError(f"invalid keystore name {name!r}: use 1-64 letters, digits, '-' or '_'")


def ensure_free(name: str, keystore_dir: Path) -> None:
    """Raise WalletError if `name` is invalid or already taken (check before asking for secrets)."""
    check_name(name)
    path = Path(keystore_dir) / f"{name}.json"
    if path.exists():
        raise WalletError(f"keystore {name!r} already exists at {path}; choose another name")


def keyfile_address(data: dict[str, Any]) -> str | None:
    """The checksum address a keystore records, or None when it records none (cast) or a malformed one."""
    raw = data.get("address")
    if isinstance(raw, str):
        raw = raw if raw.startswith(("0x", "0X")) else "0x" + raw
        if is_hex_address(raw):
            return to_checksum_address(raw)
    return None


def read_keyfile(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a v3 keystore. Raises WalletError when unreadable or not v3."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise WalletError(f"cannot read keystore file {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WalletError(f"{path} is not a JSON keystore file") from None
    if not isinstance(data, dict) or data.get("version") != 3 or not isinstance(
            data.get("crypto", data.get("Crypto")), dict):
        raise WalletError(f"{path} is not a Web3 Secret Storage v3 keystore")
    return data


def _load(path: Path) -> Keystore:
    data = read_keyfile(path)
    address = keyfile_address(data)
    if address is None:
        raise WalletError(f"keystore {path} has no address field; re-import it with `agora wallet import`")
    return Keystore(name=path.stem, address=address, path=path)


def _write(name: str, data: dict[str, Any], keystore_dir: Path) -> Keystore:
    """Store `data` as `<name>.json`, refusing existing names and already-present addresses."""
    check_name(name)
    keystore_dir = Path(keystore_dir)
    address = keyfile_address(data)
    assert address is not None, "keystore data must carry its address"
    keystore_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keystore_dir, 0o700)
    ensure_free(name, keystore_dir)
    path = keystore_dir / f"{name}.json"
    for other in list_keystores(keystore_dir):
        if other.address.lower() == address.lower():
            raise WalletError(f"address {address} is already stored as keystore {other.name!r}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WalletError(f"keystore {name!r} already exists at {path}; choose another name") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            json.dump(data, fh)
            fh.write("\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Keystore(name=name, address=address, path=path)


def _encrypt(key: bytes, password: str, iterations: int | None) -> dict[str, Any]:
    return Account.encrypt(key, password, kdf="scrypt", iterations=iterations or DEFAULT_ITERATIONS)


# ---------------------------------------------------------------- creating and importing
def create(name: str, password: str, *, keystore_dir: Path, iterations: int | None = None) -> Keystore:
    """Make a new random account. Raises WalletError on a bad or taken name."""
    check_name(name)
    acct = Account.create()
    return _write(name, _encrypt(acct.key, password, iterations), keystore_dir)


def import_private_key(name: str, key_hex: str, password: str, *, keystore_dir: Path,
                       iterations: int | None = None) -> Keystore:
    """Encrypt a raw private key (64 hex digits, optional 0x). Raises WalletError (never echoing the key)."""
    check_name(name)
    text = key_hex.strip()
    text = text[2:] if text.lower().startswith("0x") else text
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise WalletError("private key must be 32 bytes written as 64 hex digits (optionally 0x-prefixed)")
    try:
        acct = Account.from_key(bytes.fromhex(text))
    except (ValueError, TypeError):
        raise WalletError("private key is out of range for secp256k1") from None
    return _write(name, _encrypt(acct.key, password, iterations), keystore_dir)


def import_mnemonic(name: str, mnemonic: str, password: str, *, keystore_dir: Path, account_index: int = 0,
                    path: str | None = None, iterations: int | None = None) -> Keystore:
    """Derive a BIP-39/BIP-44 account (default m/44'/60'/0'/0/{account_index}) and store it.

    Raises WalletError on a bad name, index, path or mnemonic (the words are never echoed).
    """
    check_name(name)
    if account_index < 0:
        raise WalletError(f"account index must be >= 0, got {account_index}")
    hd_path = path or DEFAULT_HD_PATH.format(index=account_index)
    Account.enable_unaudited_hdwallet_features()
    try:
        acct = Account.from_mnemonic(" ".join(mnemonic.split()), account_path=hd_path)
    except (ValidationError, ValueError) as err:  # never echo err: its message quotes the words
        raise WalletError(f"not a valid BIP-39 mnemonic or derivation path {hd_path!r} "
                          f"({type(err).__name__})") from None
    return _write(name, _encrypt(acct.key, password, iterations), keystore_dir)


def import_file(path: Path, name: str, *, keystore_dir: Path, password: str | None = None) -> Keystore:
    """Copy a v3 keystore made by another tool (geth, `cast wallet new`, MetaMask export).

    Files without an `address` field (cast writes none) need `password` to learn it; with a password the
    decrypted key is also checked against the stored address. Raises WalletError / WrongPasswordError.
    """
    check_name(name)
    data = read_keyfile(Path(path))
    address = keyfile_address(data)
    if password is None and address is None:
        raise WalletError(f"{path} does not record its address; a password is needed to import it")
    if password is not None:
        derived = _decrypt(data, password, label=f"'{Path(path).name}'").address
        if address is not None and address.lower() != derived.lower():
            raise WalletError(f"{path} claims address {address} but its key belongs to {derived}")
        data = {**data, "address": derived[2:].lower()}
    return _write(name, data, keystore_dir)


# ---------------------------------------------------------------- finding and unlocking
def list_keystores(keystore_dir: Path) -> list[Keystore]:
    """All valid keystores in `keystore_dir`, sorted by name (unreadable files are skipped)."""
    if not Path(keystore_dir).is_dir():
        return []
    found = []
    for path in sorted(Path(keystore_dir).glob("*.json")):
        try:
            found.append(_load(path))
        except WalletError:
            continue
    return found


def find(name_or_address: str, keystore_dir: Path) -> Keystore:
    """Look a keystore up by name or address. Raises WalletError naming the ones available."""
    keystore_dir = Path(keystore_dir)
    if NAME_RE.match(name_or_address) and (keystore_dir / f"{name_or_address}.json").is_file():
        return _load(keystore_dir / f"{name_or_address}.json")
    stores = list_keystores(keystore_dir)
    if is_hex_address(name_or_address):
        for ks in stores:
            if ks.address.lower() == name_or_address.lower():
                return ks
    names = ", ".join(ks.name for ks in stores) or "none yet; create one with `agora wallet new NAME`"
    raise WalletError(f"no keystore {name_or_address!r} in {keystore_dir} (available: {names})")


def _decrypt(data: dict[str, Any], password: str, *, label: str) -> LocalAccount:
    try:
        key = Account.decrypt(data, password)
    except EthKeyfileValueError:  # what decoding raises, and only, for a MAC (v3) or checksum (v4) mismatch
        raise WrongPasswordError(f"wrong password for keystore {label}") from None
    except ValueError as err:
        raise WalletError(f"cannot decrypt keystore {label}: {err}") from None
    except (KeyError, TypeError) as err:
        raise WalletError(f"malformed keystore {label}: missing or bad field {err}") from None
    return Account.from_key(key)


def unlock(keystore: Keystore, password: str) -> LocalAccount:
    """Decrypt a keystore. Raises WrongPasswordError on a wrong password, WalletError on a bad file."""
    label = f"'{keystore.name}' ({keystore.address})"
    acct = _decrypt(read_keyfile(keystore.path), password, label=label)
    if acct.address.lower() != keystore.address.lower():
        raise WalletError(f"keystore {label} decrypts to a different address {acct.address}: file is corrupt")
    return acct


# ---------------------------------------------------------------- passwords and the default account
def resolve_password(*, password_file: Path | None, env_password: str | None, prompt: bool,
                     confirm: bool = False, label: str = "Keystore password") -> str:
    """Password from `password_file` (first line), else `env_password`, else a hidden TTY prompt.

    `confirm` asks twice and refuses an empty password (new keys). Raises WalletError when no source works.
    """
    if password_file is not None:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except OSError as err:
            raise WalletError(f"cannot read password file {password_file}: {err.strerror or err}") from None
        password = text.split("\n", 1)[0].removesuffix("\r")
    elif env_password is not None:
        password = env_password
    elif prompt and sys.stdin is not None and sys.stdin.isatty():
        import typer

        password = typer.prompt(label, hide_input=True, confirmation_prompt=confirm)
    else:
        raise WalletError("no keystore password: pass --password-file FILE, set AGORA_PASSWORD, "
                          "or run in a terminal to be prompted")
    if confirm and not password:
        raise WalletError("refusing an empty password for a new keystore")
    return password


def load_account(*, account: str | None, password_file: Path | None, settings: Settings) -> LocalAccount:
    """Unlock the chosen account: `account` (name or address), else AGORA_ACCOUNT, else the only keystore.

    Raises WalletError when none or several keystores leave the choice open, WrongPasswordError on a bad
    password.
    """
    keystore_dir = settings.keystore_dir
    target = account or settings.account
    if target:
        ks = find(target, keystore_dir)
    else:
        stores = list_keystores(keystore_dir)
        if not stores:
            raise WalletError(f"no keystores in {keystore_dir}: create one with `agora wallet new NAME` "
                              "or `agora wallet import NAME`")
        if len(stores) > 1:
            names = ", ".join(ks.name for ks in stores)
            raise WalletError(f"several keystores ({names}): choose one with --account NAME or AGORA_ACCOUNT")
        ks = stores[0]
    password = resolve_password(password_file=password_file, env_password=settings.password, prompt=True,
                                label=f"Password for {ks.name} ({ks.address})")
    return unlock(ks, password)
