"""API keys: generating client ids and secrets, hashing and checking secrets.

A secret is shown once, when its key is created, and stored only as a salted
PBKDF2-SHA256 hash. The key file written for users is the JSON that pyensign's
``Ensign(cred_path=...)`` reads: ``{"ClientID": ..., "ClientSecret": ...}``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import string
from collections.abc import Iterable
from pathlib import Path

from .catalog import ApiKey, Catalog
from .jetstream_catalog import shared_catalog
from .tokens import PERMISSIONS

_ALPHABET = string.ascii_letters + string.digits
_ITERATIONS = 20_000
_SCHEME = "pbkdf2_sha256"


def _random_text(length: int, alphabet: str = _ALPHABET) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def hash_secret(secret: str, *, iterations: int = _ITERATIONS) -> str:
    """Return ``scheme$iterations$salt$digest`` for a client secret."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    encode = base64.urlsafe_b64encode
    return f"{_SCHEME}${iterations}${encode(salt).decode()}${encode(digest).decode()}"


def secret_matches(secret: str, stored: str) -> bool:
    """True if ``secret`` hashes to ``stored`` (compared in constant time)."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        salt_bytes = base64.urlsafe_b64decode(salt)
        expected = base64.urlsafe_b64decode(digest)
    except ValueError:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt_bytes, int(iterations))
    return hmac.compare_digest(actual, expected)


def create_api_key(
    catalog: Catalog, project_name: str, permissions: Iterable[str] | None = None
) -> dict[str, str]:
    """Create a key on ``project_name`` (made if new), with every permission or only ``permissions``.

    Returns ``{"ClientID": ..., "ClientSecret": ...}``, the only time the secret is seen.
    Raises ValueError naming any permission Ensign does not define.
    """
    granted = None if permissions is None else tuple(dict.fromkeys(permissions))
    unknown = [name for name in granted or () if name not in PERMISSIONS]
    if unknown or granted == ():
        raise ValueError(
            f"unknown permission {', '.join(unknown)}" if unknown else "a key needs at least one permission"
        )
    project = catalog.ensure_project(project_name)
    client_id = _random_text(32, string.ascii_letters)
    secret = _random_text(64)
    catalog.add_api_key(client_id, hash_secret(secret), project, granted)
    return {"ClientID": client_id, "ClientSecret": secret}


def create_key(data_dir: Path, project_name: str, permissions: Iterable[str] | None = None) -> dict[str, str]:
    """Create a key in the catalog of the data directory ``data_dir``, as :func:`create_api_key` does.

    The catalog is opened for this one key and closed again, so this works while a server
    runs on that directory (it reads keys from disk on each authentication). For a server
    whose store is JetStream (its ``server.json`` says so), the key goes to the catalog in
    the NATS cluster, where every gateway of that log finds it.
    """
    from .server import read_state  # the server imports this module (through the auth endpoint)

    state = read_state(Path(data_dir)) or {}
    if state.get("store") == "jetstream":
        with shared_catalog(state["nats"], state["jetstream_name"]) as catalog:
            return create_api_key(catalog, project_name, permissions)  # type: ignore[arg-type]
    catalog = Catalog(Path(data_dir))
    try:
        return create_api_key(catalog, project_name, permissions)
    finally:
        catalog.close()


@functools.cache
def _unknown_id_hash() -> str:
    """A hash of a random secret, made once, to check secrets sent with unknown client ids against.

    Checking it costs what checking a real key's secret costs, so the time an answer takes
    does not tell whether a client id exists.
    """
    return hash_secret(secrets.token_urlsafe(32))


def authenticate(catalog: Catalog, client_id: str, secret: str) -> ApiKey | None:
    """The API key if ``client_id`` exists and ``secret`` is its secret, else None.

    An unknown client id costs one secret check too, like a known one with a wrong secret.
    """
    key = catalog.find_api_key(client_id)
    stored = key.secret_hash if key is not None else _unknown_id_hash()
    if not secret_matches(secret, stored) or key is None:
        return None
    return key


def write_key_file(path: Path, credentials: dict[str, str]) -> None:
    """Write credentials as JSON readable by the owner only (never world-readable).

    The mode is set on the open file before anything is written, so a file that existed
    with a wider mode is narrowed too (the mode given to ``os.open`` applies to new files only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump(credentials, handle, indent=2)
        handle.write("\n")
