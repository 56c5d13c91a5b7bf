"""Keystores and `agora wallet`: round trips, wrong passwords, cast/geth interop, mnemonics, the CLI."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketplace import wallet
from marketplace.config import Settings
from marketplace.errors import WalletError, WrongPasswordError

CAST = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "cast"
MNEMONIC = "test test test test test test test test test test test junk"
ANVIL0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ANVIL1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ANVIL0_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests only: scrypt n=1024 instead of the standard 262144 (~0.5 s per encryption)."""
    monkeypatch.setattr(wallet, "DEFAULT_ITERATIONS", 1024)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("AGORA_PASSWORD", "AGORA_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def kdir(home: Path) -> Path:
    return home / "keystores"


def _cast_new(folder: Path, password: str) -> tuple[Path, str]:
    """Make a keystore with `cast wallet new`; returns (file, address cast printed)."""
    if not CAST.exists():
        pytest.skip("node_modules/.bin/cast is missing (npm install @foundry-rs/cast)")
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(CAST), "wallet", "new", str(folder), "--unsafe-password", password],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    path = re.search(r"keystore file: (\S+)", out).group(1)
    address = re.search(r"Address:\s+(0x[0-9a-fA-F]{40})", out).group(1)
    return Path(path), address


# ---------------------------------------------------------------- library
def test_create_list_unlock_round_trip(kdir: Path) -> None:
    ks = wallet.create("alice", "s3cret", keystore_dir=kdir)
    assert ks.path == kdir / "alice.json" and ks.address.startswith("0x")
    assert stat.S_IMODE(ks.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(kdir.stat().st_mode) == 0o700
    data = json.loads(ks.path.read_text())
    assert data["version"] == 3 and data["crypto"]["kdf"] == "scrypt"
    assert wallet.list_keystores(kdir) == [ks]
    assert wallet.find("alice", kdir) == ks
    assert wallet.find(ks.address.lower(), kdir) == ks
    assert wallet.unlock(ks, "s3cret").address == ks.address


def test_default_work_factor_is_standard(kdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wallet, "DEFAULT_ITERATIONS", None)
    ks = wallet.create("strong", "pw", keystore_dir=kdir)
    assert json.loads(ks.path.read_text())["crypto"]["kdfparams"]["n"] == 262144


def test_wrong_password_is_clear(kdir: Path) -> None:
    ks = wallet.create("alice", "right", keystore_dir=kdir)
    with pytest.raises(WrongPasswordError) as info:
        wallet.unlock(ks, "wrong")
    assert str(info.value) == f"wrong password for keystore 'alice' ({ks.address})"
    assert isinstance(info.value, ValueError)


def test_names_overwrites_and_duplicate_addresses(kdir: Path) -> None:
    for bad in ("", "a b", "../x", "x.json", "é"):
        with pytest.raises(WalletError, match="invalid keystore name"):
            wallet.create(bad, "pw", keystore_dir=kdir)
    ks = wallet.import_private_key("dev0", ANVIL0_KEY, "pw", keystore_dir=kdir)
    assert ks.address == ANVIL0
    with pytest.raises(WalletError, match="already exists"):
        wallet.create("dev0", "pw", keystore_dir=kdir)
    with pytest.raises(WalletError, match="already stored as keystore 'dev0'"):
        wallet.import_mnemonic("again", MNEMONIC, "pw", keystore_dir=kdir)
    with pytest.raises(WalletError, match="64 hex digits") as info:
        wallet.import_private_key("short", "0xdeadbeefcafe", "pw", keystore_dir=kdir)
    assert "deadbeef" not in str(info.value)


def test_find_missing_lists_available(kdir: Path) -> None:
    with pytest.raises(WalletError, match="none yet"):
        wallet.find("nobody", kdir)
    wallet.create("alice", "pw", keystore_dir=kdir)
    wallet.create("bob", "pw", keystore_dir=kdir)
    with pytest.raises(WalletError, match=r"no keystore 'carol' .*available: alice, bob"):
        wallet.find("carol", kdir)


def test_mnemonic_import_gives_anvil_accounts(kdir: Path) -> None:
    assert wallet.import_mnemonic("a0", MNEMONIC, "pw", keystore_dir=kdir).address == ANVIL0
    ks1 = wallet.import_mnemonic("a1", f"  {MNEMONIC}\n", "pw", keystore_dir=kdir, account_index=1)
    assert ks1.address == ANVIL1 and wallet.unlock(ks1, "pw").address == ANVIL1
    with pytest.raises(WalletError, match="not a valid BIP-39 mnemonic") as info:
        wallet.import_mnemonic("bad", "test " * 11 + "test", "pw", keystore_dir=kdir)
    assert "test test" not in str(info.value)


@pytest.mark.integration  # runs foundry's cast
def test_cast_keystore_imports_and_decrypts(tmp_path: Path, kdir: Path) -> None:
    path, address = _cast_new(tmp_path / "cast", "castpw")
    with pytest.raises(WalletError, match="password is needed"):
        wallet.import_file(path, "fromcast", keystore_dir=kdir)
    with pytest.raises(WrongPasswordError):
        wallet.import_file(path, "fromcast", keystore_dir=kdir, password="nope")
    ks = wallet.import_file(path, "fromcast", keystore_dir=kdir, password="castpw")
    assert ks.address == address
    assert wallet.unlock(ks, "castpw").address == address
    assert stat.S_IMODE(ks.path.stat().st_mode) == 0o600


@pytest.mark.integration  # runs foundry's cast
def test_cast_reads_our_keystore(kdir: Path) -> None:
    if not CAST.exists():
        pytest.skip("node_modules/.bin/cast is missing")
    ks = wallet.create("forcast", "pw", keystore_dir=kdir)
    out = subprocess.run([str(CAST), "wallet", "address", "--keystore", str(ks.path), "--password", "pw"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == ks.address


def test_import_file_rejects_non_keystores(tmp_path: Path, kdir: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(WalletError, match="not a Web3 Secret Storage v3 keystore"):
        wallet.import_file(bad, "x", keystore_dir=kdir, password="pw")


def test_resolve_password_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text(" spaced pw \nsecond line\n")
    assert wallet.resolve_password(password_file=pwfile, env_password="env", prompt=True) == " spaced pw "
    pwfile.write_text("crlf\r\n")
    assert wallet.resolve_password(password_file=pwfile, env_password=None, prompt=False) == "crlf"
    assert wallet.resolve_password(password_file=None, env_password="env", prompt=True) == "env"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a TTY: never prompt
    with pytest.raises(WalletError, match="--password-file FILE, set AGORA_PASSWORD"):
        wallet.resolve_password(password_file=None, env_password=None, prompt=True)
    with pytest.raises(WalletError, match="cannot read password file"):
        wallet.resolve_password(password_file=tmp_path / "missing", env_password=None, prompt=False)
    with pytest.raises(WalletError, match="empty password"):
        wallet.resolve_password(password_file=None, env_password="", prompt=False, confirm=True)


def test_load_account_choices(home: Path, kdir: Path, tmp_path: Path) -> None:
    settings = Settings(home=home, password="pw")
    with pytest.raises(WalletError, match="no keystores"):
        wallet.load_account(account=None, password_file=None, settings=settings)
    only = wallet.create("only", "pw", keystore_dir=kdir)
    assert wallet.load_account(account=None, password_file=None, settings=settings).address == only.address
    other = wallet.create("other", "pw", keystore_dir=kdir)
    with pytest.raises(WalletError, match=r"several keystores \(only, other\)"):
        wallet.load_account(account=None, password_file=None, settings=settings)
    by_env = Settings(home=home, password="pw", account="other")
    assert wallet.load_account(account=None, password_file=None, settings=by_env).address == other.address
    assert wallet.load_account(account=only.address, password_file=None, settings=by_env).address == only.address
    with pytest.raises(WrongPasswordError):
        wallet.load_account(account="only", password_file=None, settings=Settings(home=home, password="bad"))


# ---------------------------------------------------------------- CLI
@pytest.fixture()
def cli():
    import marketplace.cli

    marketplace.cli._register()
    runner = CliRunner()

    def invoke(*args: str, **kw):
        return runner.invoke(marketplace.cli.app, list(args), **kw)

    return invoke


def test_cli_new_list_address(cli, home: Path, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text("hunter2\n")
    res = cli("wallet", "new", "alice", "--password-file", str(pwfile), "--json")
    assert res.exit_code == 0, res.output
    made = json.loads(res.stdout)
    assert made["name"] == "alice" and made["path"] == str(home / "keystores" / "alice.json")
    listed = json.loads(cli("wallet", "list", "--json").stdout)
    assert listed == [made]
    assert json.loads(cli("wallet", "address", "alice", "--json").stdout)["address"] == made["address"]
    assert cli("wallet", "address", "alice").stdout.strip() == made["address"]
    ks = wallet.find("alice", home / "keystores")
    assert wallet.unlock(ks, "hunter2").address == made["address"]


def test_cli_home_option_and_env_password(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere"
    res = cli("wallet", "new", "bob", "--home", str(other), "--json", env={"AGORA_PASSWORD": "from-env"})
    assert res.exit_code == 0, res.output
    ks = wallet.find("bob", other / "keystores")
    assert wallet.unlock(ks, "from-env").address == json.loads(res.stdout)["address"]


def test_cli_imports(cli, home: Path, tmp_path: Path) -> None:
    pwfile, keyfile, wordsfile = tmp_path / "pw", tmp_path / "key", tmp_path / "words"
    pwfile.write_text("pw\n")
    keyfile.write_text(ANVIL0_KEY + "\n")
    wordsfile.write_text(MNEMONIC + "\n")
    res = cli("wallet", "import", "k0", "--private-key-file", str(keyfile), "--password-file", str(pwfile), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["address"] == ANVIL0
    res = cli("wallet", "import", "m1", "--mnemonic-file", str(wordsfile), "--index", "1",
              "--password-file", str(pwfile), "--json")
    assert json.loads(res.stdout)["address"] == ANVIL1
    res = cli("wallet", "import", "m2", "--mnemonic-file", "-", "--index", "2", "--password-file", str(pwfile),
              "--json", input=MNEMONIC + "\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["address"] == "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    res = cli("wallet", "import", "dup", "--mnemonic-file", str(wordsfile), "--password-file", str(pwfile))
    assert res.exit_code != 0 and "already stored as keystore 'k0'" in res.output
    res = cli("wallet", "import", "none", "--password-file", str(pwfile))
    assert res.exit_code != 0 and "exactly one of" in res.output


@pytest.mark.integration  # runs foundry's cast
def test_cli_import_cast_keystore_and_wrong_password(cli, home: Path, tmp_path: Path) -> None:
    path, address = _cast_new(tmp_path / "cast", "castpw")
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.write_text("nope\n")
    good.write_text("castpw\n")
    res = cli("wallet", "import", "c", "--keystore-file", str(path), "--password-file", str(bad))
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: wrong password for keystore"), res.output
    res = cli("wallet", "import", "c", "--keystore-file", str(path), "--password-file", str(good), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["address"] == address


def test_cli_errors_are_one_line(cli, home: Path) -> None:
    res = cli("wallet", "address", "ghost")
    assert res.exit_code != 0 and "Traceback" not in res.output
    expected = (f"error: no keystore 'ghost' in {home / 'keystores'} "
                "(available: none yet; create one with `agora wallet new NAME`)")
    assert res.output.strip().splitlines() == [expected]
    res = cli("wallet", "new", "nopw", input="")  # no TTY, no file, no env: say how to give a password
    assert res.exit_code != 0 and "AGORA_PASSWORD" in res.output and "Traceback" not in res.output
