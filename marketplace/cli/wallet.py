"""`agora wallet ...`: create, import, list and show encrypted keystores.

Secrets never travel as plain arguments: passwords come from --password-file, AGORA_PASSWORD or a hidden
prompt; private keys and mnemonics from a file, from stdin (`-`), or a hidden prompt when stdin is a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, console, emit_json, global_options, handle_errors
from marketplace.config import Settings, load_settings
from marketplace.errors import WalletError

if TYPE_CHECKING:
    from marketplace import wallet  # imported lazily below: eth_account would add ~0.5 s to `agora --help`

wallet_app = typer.Typer(help="Encrypted keystores: create, import, list, show addresses.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")

HomeOpt = Annotated[Path | None, typer.Option("--home", help="Agora home folder; keystores/ lives there [env AGORA_HOME, default ~/.agora]")]
NameArg = Annotated[str, typer.Argument(help="Keystore name: letters, digits, '-' and '_'")]


def _settings(home: Path | None) -> Settings:
    settings = load_settings()
    return settings.model_copy(update={"home": home.expanduser()}) if home is not None else settings


def _read_secret(source: Path, what: str) -> str:
    """Read a secret from a file, from stdin for `-` (a hidden prompt when stdin is a terminal).

    Raises WalletError when the file cannot be read or is empty.
    """
    if str(source) == "-":
        if sys.stdin is not None and sys.stdin.isatty():
            text = typer.prompt(what[:1].upper() + what[1:], hide_input=True)
        else:
            text = sys.stdin.read() if sys.stdin is not None else ""
    else:
        try:
            text = source.expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise WalletError(f"cannot read {what} file {source}: {reason}") from None
    if not text.strip():
        raise WalletError(f"no {what} found in {'stdin' if str(source) == '-' else source}")
    return text


def _report(action: str, ks: wallet.Keystore, json_out: bool) -> None:
    if json_out:
        emit_json(ks.to_json())
    else:
        console.print(f"[green]✓[/green] {action} keystore '{ks.name}'  {ks.address}  ({ks.path})", highlight=False,
                      soft_wrap=True)


@wallet_app.command("new")
@handle_errors
def new(ctx: typer.Context, name: NameArg, home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Create a new random account in an encrypted keystore (password: --password-file, AGORA_PASSWORD or a prompt)."""
    from marketplace import wallet

    password_file = global_options(ctx).password_file
    settings = _settings(home)
    wallet.ensure_free(name, settings.keystore_dir)
    password = wallet.resolve_password(password_file=password_file, env_password=settings.password, prompt=True,
                                       confirm=True, label=f"New password for {name}")
    ks = wallet.create(name, password, keystore_dir=settings.keystore_dir)
    _report("created", ks, json_out)


@wallet_app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    name: NameArg,
    private_key_file: Annotated[Path | None, typer.Option("--private-key-file", help="File holding a hex private key ('-' = stdin or a hidden prompt)")] = None,
    mnemonic_file: Annotated[Path | None, typer.Option("--mnemonic-file", help="File holding a BIP-39 mnemonic ('-' = stdin or a hidden prompt)")] = None,
    index: Annotated[int, typer.Option("--index", min=0, help="Account index for --mnemonic-file: m/44'/60'/0'/0/INDEX")] = 0,
    keystore_file: Annotated[Path | None, typer.Option("--keystore-file", help="A v3 keystore JSON from geth, cast, MetaMask ...; keeps its own password")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import a private key, a mnemonic account or an existing keystore file."""
    from marketplace import wallet

    password_file = global_options(ctx).password_file
    settings = _settings(home)
    wallet.ensure_free(name, settings.keystore_dir)
    sources = [opt for opt, val in (("--private-key-file", private_key_file), ("--mnemonic-file", mnemonic_file),
                                    ("--keystore-file", keystore_file)) if val is not None]
    if len(sources) != 1:
        raise WalletError("give exactly one of --private-key-file, --mnemonic-file or --keystore-file"
                          + (f" (got {', '.join(sources)})" if sources else ""))
    if index and mnemonic_file is None:
        raise WalletError("--index only applies to --mnemonic-file")
    kdir = settings.keystore_dir
    if keystore_file is not None:
        ks = _import_keystore_file(keystore_file, name, settings, password_file)
    elif private_key_file is not None:
        key = _read_secret(private_key_file, "private key")
        password = wallet.resolve_password(password_file=password_file, env_password=settings.password,
                                           prompt=True, confirm=True, label=f"New password for {name}")
        ks = wallet.import_private_key(name, key, password, keystore_dir=kdir)
    else:
        assert mnemonic_file is not None
        words = _read_secret(mnemonic_file, "mnemonic")
        password = wallet.resolve_password(password_file=password_file, env_password=settings.password,
                                           prompt=True, confirm=True, label=f"New password for {name}")
        ks = wallet.import_mnemonic(name, words, password, keystore_dir=kdir, account_index=index)
    _report("imported", ks, json_out)


def _import_keystore_file(source: Path, name: str, settings: Settings,
                          password_file: Path | None) -> wallet.Keystore:
    """Copy a foreign keystore; its password is needed (and checked) when the file records no address."""
    from marketplace import wallet

    source = source.expanduser()
    data = wallet.read_keyfile(source)
    have_password = password_file is not None or settings.password is not None
    password = None
    if have_password or wallet.keyfile_address(data) is None:
        password = wallet.resolve_password(password_file=password_file, env_password=settings.password,
                                           prompt=True, label=f"Password of {source.name}")
    return wallet.import_file(source, name, keystore_dir=settings.keystore_dir, password=password)


@wallet_app.command("list")
@handle_errors
def list_(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """List the keystores (name, address, file)."""
    from marketplace import wallet

    settings = _settings(home)
    stores = wallet.list_keystores(settings.keystore_dir)
    if json_out:
        emit_json([ks.to_json() for ks in stores])
        return
    if not stores:
        console.print(f"no keystores in {settings.keystore_dir}; create one with `agora wallet new NAME`",
                      highlight=False)
        return
    width = max(len(ks.name) for ks in stores)
    for ks in stores:
        typer.echo(f"{ks.name:<{width}}  {ks.address}  {ks.path}")


@wallet_app.command("address")
@handle_errors
def address(name: Annotated[str, typer.Argument(help="Keystore name (or address)")], home: HomeOpt = None,
            json_out: JsonOpt = False) -> None:
    """Print the address of a keystore (no password needed)."""
    from marketplace import wallet

    ks = wallet.find(name, _settings(home).keystore_dir)
    if json_out:
        emit_json(ks.to_json())
    else:
        typer.echo(ks.address)
