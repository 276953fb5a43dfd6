"""The gateway's own chain key, kept in an encrypted keystore (Web3 Secret Storage, scrypt).

The passphrase comes from ``--passphrase-file``, else ``$WATTSHARE_KEY_PASSPHRASE``,
else an interactive prompt; it is never printed or logged.
"""

import getpass
import json
import os
import sys
from pathlib import Path

from gateway.errors import KeystoreError

ENV_PASSPHRASE = "WATTSHARE_KEY_PASSPHRASE"
MIN_PASSPHRASE = 8


def read_passphrase(passphrase_file=None, confirm=False, environ=os.environ):
    """The passphrase from a file, the environment or the terminal (in that order)."""
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_text(encoding="utf-8")
        except OSError as e:
            raise KeystoreError(
                f"{passphrase_file}: cannot read the passphrase file: {e}"
            ) from None
        passphrase = text.rstrip("\r\n")
        source = str(passphrase_file)
    elif environ.get(ENV_PASSPHRASE):
        passphrase = environ[ENV_PASSPHRASE]
        source = "$" + ENV_PASSPHRASE
    elif sys.stdin.isatty():
        passphrase = getpass.getpass("Passphrase for the gateway's chain key: ")
        if confirm and getpass.getpass("Repeat the passphrase: ") != passphrase:
            raise KeystoreError("the passphrases do not match")
        source = "the prompt"
    else:
        raise KeystoreError(
            "no passphrase for the gateway's chain key: pass --passphrase-file FILE or set "
            f"${ENV_PASSPHRASE} (no terminal to prompt on)"
        )
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeystoreError(
            f"the passphrase from {source} is too short: at least {MIN_PASSPHRASE} characters"
        )
    return passphrase


def create(path, passphrase):
    """Generate a key, write it encrypted to ``path`` (mode 0600); returns its address."""
    from eth_account import Account  # slow import: only when a key is made or opened

    path = Path(path)
    account = Account.create()
    keystore = Account.encrypt(account.key, passphrase)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path}: a keystore already exists; not overwriting it") from None
    except OSError as e:
        raise KeystoreError(f"{path}: cannot create the keystore: {e}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(keystore, f)
        f.flush()
        os.fsync(f.fileno())
    return account.address


def address(path):
    """The checksummed address stored (unencrypted) in a keystore file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        raw = data["address"]
    except FileNotFoundError:
        raise KeystoreError(f"{path}: no keystore (run `wattshare gateway init`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KeystoreError(f"{path}: not a keystore file: {e}") from None
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + raw.removeprefix("0x"))


def unlock(path, passphrase):
    """The private key bytes (for the chain link, later)."""
    from eth_account import Account

    try:
        return bytes(Account.decrypt(Path(path).read_text(encoding="utf-8"), passphrase))
    except FileNotFoundError:
        raise KeystoreError(f"{path}: no keystore (run `wattshare gateway init`)") from None
    except ValueError:
        raise KeystoreError(f"{path}: wrong passphrase or damaged keystore") from None
