"""Reviewer logins for ``slopewatch serve``: the auth file, password checks and login throttling.

The auth file holds one ``user:secret`` per line (``#`` starts a comment). A secret is either a
salted scrypt hash, ``scrypt$<salt hex>$<hash hex>`` (what ``slopewatch user add`` writes), or a
plain password (accepted for local trials; anyone who can read the file can log in). Every check
costs one scrypt and compares in constant time, whoever the user and whatever the secret's kind,
so neither timing nor error tells which user names exist.

Gradio's built-in ``auth=`` has no rate limit (about 200 guesses a second were measured). Here
repeated failures lock a user name, and separately the client address they came from, for a
time that doubles with each further failure. Gradio hands the auth callable only the user name
and password, so :class:`ClientAddressMiddleware` (an ASGI middleware given to the app through
``launch(app_kwargs=...)``) puts the TCP peer's address in a context variable for it. Behind a
reverse proxy that address is the proxy's: every login then shares one address budget.
The counters live in the server's memory: a restart forgets them.
"""

from __future__ import annotations

import contextvars
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import SlopewatchError

log = logging.getLogger("slopewatch.auth")

# scrypt at n=2**14, r=8: 16 MB and ~50 ms a check, the standard library's interactive-login
# strength. Changing these needs a new prefix: stored hashes do not carry them.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
PREFIX = "scrypt$"
NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD_CHARS = 8

# The client address of the request being handled (set by ClientAddressMiddleware).
client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)


class LoginThrottled(SlopewatchError):
    """Too many failed logins lately for this user name or client address; ``retry_after`` seconds left."""

    def __init__(self, what: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"too many failed logins for {what}: try again in {max(1, round(retry_after))} s")


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, maxmem=64 * 2**20, **SCRYPT)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$<salt hex>$<hash hex>`` of ``password`` with a fresh 16-byte salt."""
    salt = salt or secrets.token_bytes(16)
    return f"{PREFIX}{salt.hex()}${_scrypt(password, salt).hex()}"


# What an unknown user's password (or a plain one) is hashed against, so every check costs one scrypt.
_DUMMY = hash_password(secrets.token_hex(16))


def verify_password(password: str, secret: str | None) -> bool:
    """Whether ``password`` matches ``secret`` (a scrypt hash or a plain password; None: no such user).

    Always one scrypt and a constant-time comparison.

    Raises:
        ValueError: a ``scrypt$`` secret that is not ``scrypt$<salt hex>$<hash hex>``.
    """
    if secret is not None and secret.startswith(PREFIX):
        salt_hex, sep, hash_hex = secret[len(PREFIX):].partition("$")
        try:
            salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(hash_hex)
        except ValueError:
            raise ValueError("expected scrypt$<salt hex>$<hash hex>, found a malformed scrypt secret") from None
        if not sep or not salt or len(expected) != SCRYPT["dklen"]:
            raise ValueError("expected scrypt$<salt hex>$<hash hex>, found a malformed scrypt secret")
        return hmac.compare_digest(_scrypt(password, salt), expected)
    salt_hex, _, hash_hex = _DUMMY[len(PREFIX):].partition("$")
    hmac.compare_digest(_scrypt(password, bytes.fromhex(salt_hex)), bytes.fromhex(hash_hex))  # the same cost as a real check
    if secret is None:
        return False
    return hmac.compare_digest(password.encode("utf-8"), secret.encode("utf-8"))


def parse_users(lines: list[str], source: str) -> list[tuple[str, str]]:
    """``(user, secret)`` pairs from ``user:secret`` lines (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: a line without ``user:secret``, or a malformed scrypt secret, named by ``source:line``.
    """
    out = []
    for k, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, sep, secret = text.partition(":")
        where = f"{source}:{k}: " if source else ""
        if not sep or not user or not secret:
            # Never echo the line: it may hold a password.
            raise ValueError(f"{where}auth: expected user:password or user:scrypt$<salt>$<hash>, found a line without both parts")
        if secret.startswith(PREFIX):
            try:
                verify_password("", secret)
            except ValueError as exc:
                raise ValueError(f"{where}auth: {exc}") from None
        out.append((user, secret))
    return out


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    return parse_users(Path(path).read_text().splitlines(), str(path))


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ValueError(f"user name: expected 1-64 letters, digits or . _ @ -, found {name!r:.80}")
    return name


def write_user(path: Path, name: str, password: str) -> bool:
    """Add or replace ``name``'s line in the auth file with a scrypt hash of ``password``.

    The file is rewritten whole under a temporary name and renamed (readable by its owner only),
    so a crash leaves the old file or the new one. Returns whether the user already had a line.
    """
    check_name(name)
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    entry = f"{name}:{hash_password(password)}"
    replaced = False
    for k, line in enumerate(lines):
        if line.strip().partition(":")[0] == name and not line.strip().startswith("#"):
            lines[k] = entry
            replaced = True
    if not replaced:
        lines.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return replaced


def read_password(stdin=None, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """The new password: asked twice at a terminal, else the first line of stdin (for scripts).

    Raises:
        ValueError: the two entries differ, or the password is shorter than ``MIN_PASSWORD_CHARS``.
    """
    stdin = stdin or sys.stdin
    if stdin.isatty():
        password = prompt("New password: ")
        if prompt("Repeat it: ") != password:
            raise ValueError("password: the two entries differ; nothing written")
    else:
        password = stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password: expected at least {MIN_PASSWORD_CHARS} characters, found {len(password)}; nothing written")
    return password


@dataclass
class UserAddConfig:
    """Settings of ``slopewatch user add``: writes a salted scrypt hash of a password read from a
    prompt (or from stdin when piped), never from the command line.

    Attributes:
        name: the reviewer's login name (1-64 letters, digits or . _ @ -).
        auth_file: the auth file to add the user to (created readable by its owner only); an
            existing line for the user is replaced.
    """

    name: str
    auth_file: Path

    def __post_init__(self) -> None:
        check_name(self.name)


def run_user_add(cfg: UserAddConfig) -> dict:
    replaced = write_user(cfg.auth_file, cfg.name, read_password())
    return {"user": cfg.name, "auth_file": str(cfg.auth_file), "replaced": replaced, "hash": "scrypt"}


class LoginThrottle:
    """Exponential backoff after repeated login failures, per key (a user name or an address).

    The first ``free`` failures in a row cost nothing; each one after that locks the key for
    ``base_s`` doubled per extra failure, at most ``max_s``. A success clears the key; a key with
    no failure for ``forget_s`` starts over. Attempts while locked are refused unchecked and do
    not count (a locked key reveals nothing, and cannot be locked for longer by guessing on).
    """

    def __init__(self, free: int, base_s: float = 1.0, max_s: float = 300.0, forget_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000):
        self.free, self.base_s, self.max_s, self.forget_s, self.clock, self.max_keys = free, base_s, max_s, forget_s, clock, max_keys
        self._state: dict[str, tuple[int, float, float]] = {}  # key -> (failures in a row, locked until, last failure)
        self._lock = threading.Lock()

    def locked_for(self, key: str) -> float:
        """Seconds ``key`` stays locked (0: it may try)."""
        with self._lock:
            _, until, _ = self._state.get(key, (0, 0.0, 0.0))
            return max(0.0, until - self.clock())

    def failed(self, key: str) -> tuple[int, float]:
        """Count a failure; returns ``(failures in a row, seconds now locked)``."""
        now = self.clock()
        with self._lock:
            n, until, last = self._state.get(key, (0, 0.0, 0.0))
            n = 1 if now - last > self.forget_s else n + 1
            lock = min(self.max_s, self.base_s * 2 ** (n - self.free - 1)) if n > self.free else 0.0
            self._state[key] = (n, now + lock, now)
            if len(self._state) > self.max_keys:
                self._prune(now)
            return n, lock

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)

    def _prune(self, now: float) -> None:
        """Forget stale keys; past ``max_keys`` live ones, the oldest (a spray of made-up names must not grow memory)."""
        self._state = {k: v for k, v in self._state.items() if now - v[2] <= self.forget_s or v[1] > now}
        for key in sorted(self._state, key=lambda k: self._state[k][2])[:max(0, len(self._state) - self.max_keys)]:
            del self._state[key]


class Authenticator:
    """The login check ``slopewatch serve`` gives Gradio (``auth=authenticator.check``).

    Args:
        users: ``(user, secret)`` pairs (later lines win).
        per_user: throttle keyed by user name (known or not).
        per_address: throttle keyed by client address; more failures are free here, since
            several reviewers may share an office address.
    """

    def __init__(self, users: list[tuple[str, str]], per_user: LoginThrottle | None = None, per_address: LoginThrottle | None = None):
        self.users = dict(users)
        self.per_user = per_user or LoginThrottle(free=5)
        self.per_address = per_address or LoginThrottle(free=20)

    def verify(self, username: str, password: str, address: str | None) -> bool:
        """Check one login.

        Raises:
            LoginThrottled: the user name or the address is locked after repeated failures.
        """
        address = address or "unknown address"
        user_key, address_key = f"user:{username}", f"address:{address}"
        for key, what in ((user_key, f"user {username!r:.70}"), (address_key, address)):
            wait = (self.per_user if key == user_key else self.per_address).locked_for(key)
            if wait > 0:
                log.warning("slopewatch: login refused unchecked for user %r from %s: %s locked for %.0f more s",
                            username[:70], address, what, wait)
                raise LoginThrottled(what, wait)
        if verify_password(password, self.users.get(username)):
            self.per_user.succeeded(user_key)
            return True
        n_user, lock_user = self.per_user.failed(user_key)
        n_addr, lock_addr = self.per_address.failed(address_key)
        if lock_user or lock_addr:
            log.warning("slopewatch: failed login for user %r from %s (%d in a row for the user, %d from the address); "
                        "locked: user %.0f s, address %.0f s", username[:70], address, n_user, n_addr, lock_user, lock_addr)
        else:
            log.info("slopewatch: failed login for user %r from %s", username[:70], address)
        return False

    async def check(self, username: str, password: str) -> bool:
        """Gradio's auth callable. The scrypt runs in a worker thread (it would stall every other
        request for ~50 ms on the event loop); a throttled login answers 429 with Retry-After."""
        import anyio
        from fastapi import HTTPException

        address = client_address.get()
        try:
            return await anyio.to_thread.run_sync(self.verify, username, password, address)
        except LoginThrottled as exc:
            raise HTTPException(status_code=429, detail=str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after)))}) from None


class ClientAddressMiddleware:
    """Pure ASGI middleware: the TCP peer's address in ``client_address`` while a request is handled."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = client_address.set((scope.get("client") or (None,))[0])
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)
