"""Exchange accounts: who may log in, with what key, under which limits.

The accounts file (``[exchange] accounts_file``, JSON, mode 0600) holds one entry per
account: its name, its number (1 .. 2^31-1), a random 16-byte salt and
``key = scrypt(secret, salt, n=2^14, r=8, p=1, dklen=32)``.  The secret itself is never
stored.  A login proves the key without sending it (docs/PROTOCOL.md "Order entry"):
the exchange sends a fresh 24-byte nonce after its hello; the login carries
``HMAC-SHA256(key, nonce || account u32 LE)`` truncated to 16 bytes.

The key is what both sides hold: the file is login-equivalent (as an SSH host key or a
Kerberos keytab is), so it is created 0600 and read only by the exchange.  What a
leaked file does not give is the secret (scrypt makes each guess cost memory and
time: docs/DECISIONS.md "The file holds scrypt(secret, salt), not the secret").

``obpipe exchange-account add NAME`` adds an account (the secret from stdin, or
generated with ``--generate``) and prints the client's credential, a JSON line
``{"name", "account", "key"}`` that ``obpipe exchange-client --credential FILE`` reads.
An entry may override the exchange's per-account limits: ``max_open_orders``,
``max_msgs_per_s``, ``cancel_on_disconnect``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import sys

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}
NONCE_BYTES = 24
PROOF_BYTES = 16
MAX_ACCOUNT = (1 << 31) - 1
LIMIT_KEYS = ("max_open_orders", "max_msgs_per_s", "cancel_on_disconnect")


class AccountsError(ValueError):
    """An accounts file that cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class Account:
    name: str
    account: int
    key: bytes
    max_open_orders: int | None = None  # None: the exchange's [exchange] value
    max_msgs_per_s: int | None = None
    cancel_on_disconnect: bool | None = None


def derive_key(secret: bytes, salt: bytes, n: int = SCRYPT["n"], r: int = SCRYPT["r"], p: int = SCRYPT["p"]) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=64 << 20, dklen=32)


def proof(key: bytes, nonce: bytes, account: int) -> bytes:
    """The login's 16-byte proof of ``key`` for ``nonce``."""
    return hmac.new(key, nonce + int(account).to_bytes(4, "little"), hashlib.sha256).digest()[:PROOF_BYTES]


def login_message(account: int, key: bytes, nonce: bytes) -> bytes:
    """The 32-byte OE_LOGIN request for ``account`` answering ``nonce``."""
    from obpipe.ring import schema

    msg = bytearray(32)
    msg[0] = schema.OE_LOGIN
    msg[12:16] = int(account).to_bytes(4, "little")
    msg[16:32] = proof(key, nonce, account)
    return bytes(msg)


def load(path: str) -> dict[int, Account]:
    """account number -> Account.  Raises AccountsError naming the file and the entry."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AccountsError(f"{path}: accounts file not found (create it with obpipe exchange-account add)") from None
    except (OSError, ValueError) as e:
        raise AccountsError(f"{path}: not a readable accounts file: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("accounts"), list):
        raise AccountsError(f"{path}: not an obpipe accounts file (want {{\"version\": 1, \"accounts\": [...]}})")
    out: dict[int, Account] = {}
    for i, e in enumerate(doc["accounts"]):
        where = f"{path}: accounts[{i}]"
        try:
            acc = Account(name=str(e["name"]), account=int(e["account"]), key=bytes.fromhex(e["key"]),
                          max_open_orders=e.get("max_open_orders"), max_msgs_per_s=e.get("max_msgs_per_s"),
                          cancel_on_disconnect=e.get("cancel_on_disconnect"))
        except (KeyError, TypeError, ValueError) as ex:
            raise AccountsError(f"{where}: needs name, account and a hex key ({ex})") from None
        if not 1 <= acc.account <= MAX_ACCOUNT:
            raise AccountsError(f"{where}: account {acc.account} outside 1..{MAX_ACCOUNT}")
        if len(acc.key) != 32:
            raise AccountsError(f"{where}: key must be 32 bytes")
        for k in ("max_open_orders", "max_msgs_per_s"):
            v = getattr(acc, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1 << 31):
                raise AccountsError(f"{where}: {k} must be 0 (no limit) .. 2^31, got {v!r}")
        if acc.cancel_on_disconnect is not None and not isinstance(acc.cancel_on_disconnect, bool):
            raise AccountsError(f"{where}: cancel_on_disconnect must be true or false")
        if acc.account in out:
            raise AccountsError(f"{where}: account {acc.account} listed twice")
        out[acc.account] = acc
    return out


def add(path: str, name: str, secret: bytes, account: int | None = None, **limits) -> Account:
    """Add ``name`` to the accounts file ``path`` (created 0600) and return its Account."""
    doc = {"version": 1, "accounts": []}
    if os.path.exists(path):
        load(path)  # (validates)
        with open(path) as f:
            doc = json.load(f)
    entries = doc["accounts"]
    if any(e["name"] == name for e in entries):
        raise AccountsError(f"{path}: an account named {name!r} exists")
    taken = {int(e["account"]) for e in entries}
    if account is None:
        account = max(taken, default=0) + 1
    if not 1 <= account <= MAX_ACCOUNT or account in taken:
        raise AccountsError(f"{path}: account {account} is taken or outside 1..{MAX_ACCOUNT}")
    salt = os.urandom(16)
    key = derive_key(secret, salt)
    entry = {"name": name, "account": account, "salt": salt.hex(), "scrypt": SCRYPT, "key": key.hex()}
    entry.update({k: v for k, v in limits.items() if v is not None})
    entries.append(entry)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return Account(name, account, key, **{k: v for k, v in limits.items() if v is not None})


def credential(acc: Account) -> dict:
    return {"name": acc.name, "account": acc.account, "key": acc.key.hex()}


def read_credential(path: str) -> tuple[int, bytes]:
    """(account, key) from a credential file written from ``exchange-account add``'s output."""
    try:
        with open(path) as f:
            d = json.load(f)
        return int(d["account"]), bytes.fromhex(d["key"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AccountsError(f"{path}: not a credential file ({e})") from None


def main(argv: list[str] | None = None, accounts_file_of=None) -> int:
    """``obpipe exchange-account``.  ``accounts_file_of(config_path)``: the config's
    ``[exchange] accounts_file`` (the wiring reads the config; without it, --file)."""
    p = argparse.ArgumentParser(prog="obpipe exchange-account",
                                description="manage the exchange's accounts file ([exchange] accounts_file)")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="add an account; prints its client credential (JSON) on stdout")
    a.add_argument("name")
    a.add_argument("--config", help="TOML config whose [exchange] accounts_file to use")
    a.add_argument("--file", help="the accounts file (instead of --config)")
    a.add_argument("--account", type=int, help="account number (default: the next free one)")
    a.add_argument("--generate", action="store_true", help="generate a random secret instead of reading stdin")
    a.add_argument("--max-open-orders", type=int)
    a.add_argument("--max-msgs-per-s", type=int)
    a.add_argument("--cancel-on-disconnect", action=argparse.BooleanOptionalAction, default=None)
    ls = sub.add_parser("list", help="names, accounts and limits (never keys)")
    ls.add_argument("--config")
    ls.add_argument("--file")
    args = p.parse_args(argv)
    path = args.file
    if not path:
        from obpipe.ring.settings import ConfigError

        if accounts_file_of is None:
            p.error("give --file (this entry point reads no config)")
        try:
            path = accounts_file_of(args.config)
        except ConfigError as e:
            print(f"obpipe exchange-account: {e}", file=sys.stderr)
            return 2
        if not path:
            p.error("no accounts file: give --file or a --config with [exchange] accounts_file")
    try:
        if args.cmd == "list":
            for acc in load(path).values():
                lim = {k: getattr(acc, k) for k in LIMIT_KEYS if getattr(acc, k) is not None}
                print(json.dumps({"name": acc.name, "account": acc.account, **lim}))
            return 0
        if args.generate:
            secret = secrets.token_urlsafe(32).encode()
        else:
            secret = sys.stdin.buffer.read().rstrip(b"\r\n")
            if len(secret) < 8:
                print("obpipe exchange-account: the secret on stdin must be at least 8 bytes (or use --generate)",
                      file=sys.stderr)
                return 2
        acc = add(path, args.name, secret, args.account, max_open_orders=args.max_open_orders,
                  max_msgs_per_s=args.max_msgs_per_s, cancel_on_disconnect=args.cancel_on_disconnect)
    except AccountsError as e:
        print(f"obpipe exchange-account: {e}", file=sys.stderr)
        return 2
    print(json.dumps(credential(acc)))
    print(f"added account {acc.name!r} = {acc.account} to {path}; the line above is its client credential "
          f"(keep it 0600; it logs in as this account)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
