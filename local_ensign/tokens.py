"""Signed JWTs in the shape Ensign's auth service (Quarterdeck) issues them.

pyensign reads only ``exp`` from the access token and ``nbf``/``exp`` from the
refresh token, but the gRPC service checks signature, expiry, audience, issuer and
the ``project`` claim of every access token, as the real server does. The signing
key lives in the data directory, so tokens stay valid across restarts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from ulid import ULID

from .catalog import ApiKey
from .ids import ulid_to_str

ISSUER = "local-ensign"
AUDIENCE = "local-ensign"
REFRESH_AUDIENCE = f"{ISSUER}/v1/refresh"
ALGORITHM = "HS256"
ACCESS_TTL = 3600.0
REFRESH_TTL = 7200.0
REFRESH_LEAD = 900.0
SIGNING_KEY_FILE = "signing.key"
KEY_BYTES = 32

PERMISSIONS = (
    "publisher",
    "subscriber",
    "topics:create",
    "topics:read",
    "topics:edit",
    "topics:destroy",
    "metrics:read",
)


class InvalidToken(Exception):
    """The token is malformed, expired, signed with another key or meant for another use."""


@dataclass(frozen=True)
class Claims:
    """What an access token says about its bearer."""

    key_id: str
    project_id: bytes
    permissions: frozenset[str]


class SigningKeyError(Exception):
    """The signing key file is unusable; the message (one line) names the file and the way out."""


def load_signing_key(data_dir: Path) -> bytes:
    """Read the data directory's signing key, creating it (readable by the owner only) once.

    A file that does not hold exactly ``KEY_BYTES`` bytes in hex raises SigningKeyError rather
    than being used: a short or empty key would let anyone forge tokens.
    """
    path = Path(data_dir) / SIGNING_KEY_FILE
    try:
        text = path.read_bytes().decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return _create_signing_key(path)
    except OSError as err:
        raise SigningKeyError(
            f"cannot read {path} ({err.strerror}): give the user running the server read access to it"
        ) from err
    return _parse_signing_key(path, text)


def _parse_signing_key(path: Path, text: str) -> bytes:
    """The key that ``text``, read from ``path``, spells in hex; SigningKeyError if it is not one."""
    expected = f"expected {2 * KEY_BYTES} hex characters"
    if not text:
        problem = f"is empty ({expected})"
    elif not all(char in string.hexdigits for char in text):
        problem = f"is not hexadecimal ({expected})"
    elif len(text) != 2 * KEY_BYTES:
        problem = f"holds {len(text)} hex characters ({expected})"
    else:
        return bytes.fromhex(text)
    raise SigningKeyError(
        f"{path} {problem}: delete it to have a new key made, which invalidates every token issued so far"
    )


def _create_signing_key(path: Path) -> bytes:
    """Make a new key and put it at ``path`` whole or not at all.

    The key goes to a temporary file (mode 0600) in the same directory, reaches the disk,
    and only then is renamed onto ``path``: a crash or a full disk leaves no partial key.
    """
    key = secrets.token_bytes(KEY_BYTES)
    try:
        _write_atomically(path, key.hex())
    except OSError as err:
        raise SigningKeyError(
            f"cannot create {path} ({err.strerror}): make room or fix the directory's permissions"
        ) from err
    return key


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with a file, readable by the owner only, holding ``text``, synced to disk."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TokenIssuer:
    """Issues and verifies access/refresh token pairs with one HMAC key."""

    def __init__(self, key: bytes, access_ttl: float = ACCESS_TTL) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a signing key needs at least {KEY_BYTES} bytes, not {len(key)}")
        self._key = key
        self.access_ttl = access_ttl

    def issue(self, api_key: ApiKey) -> tuple[str, str]:
        """Return ``(access_token, refresh_token)`` for an authenticated API key."""
        now = time.time()
        access_exp = now + self.access_ttl
        common = {
            "sub": ulid_to_str(api_key.key_id),
            "iss": ISSUER,
            "iat": int(now),
            "org": ulid_to_str(api_key.org_id),
            "project": ulid_to_str(api_key.project_id),
        }
        access = {
            **common,
            "aud": [AUDIENCE],
            "nbf": int(now),
            "exp": int(access_exp),
            "jti": str(ULID()),
            "permissions": list(PERMISSIONS if api_key.permissions is None else api_key.permissions),
            "account": "sandbox",
            "client_id": api_key.client_id,
        }
        refresh = {
            **common,
            "aud": [AUDIENCE, REFRESH_AUDIENCE],
            "nbf": int(access_exp - min(REFRESH_LEAD, self.access_ttl)),
            "exp": int(now + max(REFRESH_TTL, 2 * self.access_ttl)),
            "jti": str(ULID()),
            "client_id": api_key.client_id,
        }
        return (
            jwt.encode(access, self._key, algorithm=ALGORITHM),
            jwt.encode(refresh, self._key, algorithm=ALGORITHM),
        )

    def verify_access(self, token: str) -> Claims:
        """Check an access token and return its claims; raise InvalidToken if it fails."""
        payload = self._decode(token, AUDIENCE)
        if REFRESH_AUDIENCE in payload.get("aud", ()):
            raise InvalidToken("a refresh token cannot be used as an access token")
        try:
            project_id = ULID.from_str(payload["project"]).bytes
        except (KeyError, ValueError, TypeError) as err:
            raise InvalidToken("the project claim is missing or not a ULID") from err
        return Claims(
            key_id=str(payload.get("sub", "")),
            project_id=project_id,
            permissions=frozenset(payload.get("permissions") or ()),
        )

    def verify_refresh(self, token: str) -> str:
        """Check a refresh token and return the client id it was issued to."""
        payload = self._decode(token, REFRESH_AUDIENCE)
        client_id = payload.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidToken("the refresh token names no client")
        return client_id

    def _decode(self, token: str, audience: str) -> dict:
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "nbf", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise InvalidToken(str(err)) from err
