"""Runs the whole server: catalog, event log, committer, gRPC service and auth endpoint.

``serve()`` starts everything, writes ``server.json`` (where to reach the server;
``local_ensign.discovery`` reads it) into the data directory, prints one ready line
to standard output once both endpoints accept connections, and shuts down cleanly
when asked to stop.

Everything it writes is its owner's alone (a 0700 directory of 0600 files), and
a data directory it cannot use (a damaged or foreign file, a full or read-only
disk, a missing events file) stops it with one line that names the file, the
problem and what to do.

Given a certificate and its key (``tls_cert``/``tls_key``), it serves both gRPC and
the auth endpoint over TLS only; a certificate or key it cannot use stops it with
one line naming the file.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import socket
import ssl
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from . import __version__, dedup
from .auth_http import AuthEndpoint
from .catalog import Catalog
from .committer import Committer
from .eventlog import EventLog, MemoryEventLog, SQLiteEventLog
from .groups import GroupRegistry, GroupSettings
from .jetstream_catalog import JetStreamCatalog
from .jetstream_log import JetStreamEventLog
from .nats_connection import NatsConnection
from .service import EnsignService, method_handlers
from .shared_groups import SharedGroupRegistry
from .storage import PRIVATE_FILE, StoreError, explain, make_private_dir
from .subscriptions import SubscriptionRegistry
from .tokens import ACCESS_TTL, SigningKeyError, TokenIssuer, load_signing_key

log = logging.getLogger("local_ensign.server")

# grpcio 1.59: freeing the last asyncio server shuts grpc's poller down, which joins the poller
# thread from the event loop while that thread may be blocked writing to the very loop it waits
# on; after a busy shutdown that deadlocks. So each server object is kept until the process
# ends, and ``python -m local_ensign`` leaves with os._exit, skipping the finalisers.
_KEPT_UNTIL_EXIT: list[grpc.aio.Server] = []

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5356
DEFAULT_AUTH_PORT = 5357
STATE_FILE = "server.json"
READY_PREFIX = "local_ensign ready:"
STOP_GRACE = 1.0  # seconds open streams get to finish when the server stops
# Read any message a client sends: an event over the limit must reach the service to be
# nacked. Refused by gRPC instead, it would end the publish stream, and pyensign never
# settles the events it had queued behind it.
GRPC_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", -1)]


class ServerError(Exception):
    """A problem the user can fix (a port in use, an unusable data directory)."""


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    auth_port: int = DEFAULT_AUTH_PORT
    store: str = "sqlite"  # or "memory" (events kept in memory only), or "jetstream" (see ``nats``)
    nats: tuple[str, ...] = ()  # the store "jetstream": URLs of the NATS cluster's nodes
    jetstream_name: str = "local-ensign"  # names the stream and buckets that gateways sharing a log use
    replicas: int = 1  # copies JetStream keeps of every stream and bucket
    sync: str = "full"  # or "normal": commits reach the file but are fsynced only at checkpoints
    access_ttl: float = ACCESS_TTL
    exit_with_parent: bool = False  # stop when standard input closes
    tls_cert: Path | None = None  # PEM certificate (chain) for TLS; with tls_key, TLS only
    tls_key: Path | None = None  # its unencrypted PEM private key
    groups: GroupSettings = field(default_factory=GroupSettings)  # bounds on consumer groups


@dataclass(frozen=True)
class TlsFiles:
    """A certificate chain and its private key, checked to belong together."""

    cert: bytes
    key: bytes
    context: ssl.SSLContext  # a server context holding both, for the auth endpoint


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory if needed and check that the server can write there."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ServerError(f"cannot use data directory {path}: it is not a directory")
    try:
        make_private_dir(path)
    except OSError as err:
        cause, advice = explain(Path(err.filename or path), err)
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        raise ServerError(
            f"cannot use data directory {path}: {cause}{where}" + (f"; {advice}" if advice else "")
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ServerError(
            f"cannot use data directory {path}: not writable; give the server another --data-dir"
        )
    return path


def read_state(data_dir: Path) -> dict | None:
    """Where the server using ``data_dir`` listens, from its ``server.json``, or None."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def serves_tls(state: dict) -> bool:
    """Whether the server a ``server.json`` describes speaks TLS (its auth URL says so)."""
    return str(state.get("auth_url", "")).startswith("https://")


class _EncryptedKey(Exception):
    """Raised from the password callback: the server never prompts for a passphrase."""


def _ask_no_passphrase() -> bytes:
    """Refuse an encrypted key at once instead of letting OpenSSL prompt on the terminal."""
    raise _EncryptedKey


def load_tls(cert_path: Path, key_path: Path) -> TlsFiles:
    """Read a PEM certificate and key and check that they belong together, or say which file is wrong.

    gRPC checks nothing until a client connects, so a bad file would otherwise show up
    only as failed handshakes: everything is checked here, before anything listens.
    """
    cert, key = _read_tls_file("certificate", cert_path), _read_tls_file("key", key_path)
    try:
        ssl.create_default_context().load_verify_locations(cadata=cert.decode("latin-1"))
    except ssl.SSLError:
        raise ServerError(f"TLS certificate {cert_path} holds no PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=_ask_no_passphrase)
    except _EncryptedKey:
        raise ServerError(f"TLS key {key_path} is encrypted; give the server an unencrypted key") from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise ServerError(f"TLS key {key_path} does not match certificate {cert_path}") from None
        raise ServerError(f"TLS key {key_path} holds no PEM private key") from None
    return TlsFiles(cert, key, context)


def _read_tls_file(what: str, path: Path) -> bytes:
    """The bytes of a certificate or key file, or a ServerError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ServerError(f"cannot read TLS {what} {path}: {err.strerror}") from None


def _lock_data_dir(data_dir: Path, stack: ExitStack) -> None:
    """Make sure only one server writes to a data directory at a time."""
    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    handle = stack.enter_context(os.fdopen(fd, "r+"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ServerError(f"another local_ensign server is already using {data_dir}") from None


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ServerError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _open_stores(
    config: ServerConfig, data_dir: Path, stack: ExitStack
) -> tuple[Catalog, EventLog, TokenIssuer]:
    """Open the catalog, the event log and the signing key, or explain in one line why not."""
    if config.store == "jetstream":
        return _open_jetstream(config, stack)
    try:
        catalog = Catalog(data_dir)
        stack.callback(catalog.close)
        if config.store == "memory":
            event_log: EventLog = MemoryEventLog()
        else:
            event_log = SQLiteEventLog(data_dir, config.sync)
        # Closed even when refused: an unclosed log leaves a -wal file behind, which SQLite
        # would replay over an events file restored from a backup.
        stack.callback(event_log.close)
        catalog.claim_event_log(event_log.log_id, SQLiteEventLog.FILENAME)
        issuer = TokenIssuer(load_signing_key(data_dir), access_ttl=config.access_ttl)
    except (StoreError, SigningKeyError) as err:
        advice = getattr(err, "advice", "")
        raise ServerError(
            f"cannot use data directory {data_dir}: {err}" + (f"; {advice}" if advice else "")
        ) from None
    except OSError as err:
        raise ServerError(f"cannot use data directory {data_dir}: {err.filename}: {err.strerror}") from None
    return catalog, event_log, issuer


def _open_jetstream(config: ServerConfig, stack: ExitStack) -> tuple[Catalog, EventLog, TokenIssuer]:
    """Catalog, event log and signing key in the NATS cluster that every gateway of the log shares."""
    where = ", ".join(config.nats)
    try:
        connection = NatsConnection(list(config.nats), name=f"local_ensign {os.getpid()}")
        stack.callback(connection.close)
        catalog = JetStreamCatalog(connection, config.jetstream_name, config.replicas)
        stack.callback(catalog.close)
        event_log = JetStreamEventLog(connection, config.jetstream_name, config.replicas)
        stack.callback(event_log.close)
        issuer = TokenIssuer(catalog.signing_key(), access_ttl=config.access_ttl)
    except StoreError as err:
        raise ServerError(f"cannot use JetStream at {where}: {err}") from None
    return catalog, event_log, issuer  # type: ignore[return-value]


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT/SIGTERM (or, if asked, until standard input closes)."""
    os.umask(0o077)  # every file the server makes is its owner's alone
    tls = _configured_tls(config)
    data_dir = prepare_data_dir(config.data_dir)
    with ExitStack() as stack:
        _lock_data_dir(data_dir, stack)
        _check_port_free(config.host, config.port)
        _check_port_free(config.host, config.auth_port)
        catalog, event_log, issuer = _open_stores(config, data_dir, stack)
        registry = SubscriptionRegistry(event_log)
        policies = {t.id: dedup.load(t.deduplication) for t in catalog.all_topics() if t.deduplication}
        committer = Committer(event_log, registry, policies)
        if event_log.shared:
            event_log.follow(committer.observe)
        if event_log.shared:  # members may connect to any gateway: the group lives in the cluster
            groups = SharedGroupRegistry(event_log, config.groups)
        else:
            groups = GroupRegistry(event_log, registry, committer.save_positions, config.groups)
        service = EnsignService(
            catalog, event_log, committer, registry, groups, issuer, server_id=f"local-{os.getpid()}"
        )

        grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
        _KEPT_UNTIL_EXIT.append(grpc_server)
        grpc_server.add_generic_rpc_handlers((method_handlers(service),))
        port = _add_port(grpc_server, f"{config.host}:{config.port}", tls)
        try:
            auth = AuthEndpoint(config.host, config.auth_port, catalog, issuer, tls.context if tls else None)
        except OSError as err:
            raise ServerError(f"cannot listen on {config.host}:{config.auth_port}: {err.strerror}") from None

        await grpc_server.start()
        auth.start()
        stack.callback(auth.stop)
        committing = asyncio.create_task(committer.run(), name="committer")
        # Topics a stopped server left half destroyed (DELETING) are finished before it says it is
        # ready. It cannot hang: a log that cannot be written fails at once, and the next start retries.
        await service.finish_destructions()
        await service.finish_policies()

        state = {
            "pid": os.getpid(),
            "endpoint": f"{config.host}:{port}",
            "auth_url": f"{'https' if tls else 'http'}://{config.host}:{auth.port}",
            "version": __version__,
            "store": config.store,
        }
        if config.store == "jetstream":
            state.update(nats=list(config.nats), jetstream_name=config.jetstream_name)
        state_path = data_dir / STATE_FILE
        partial = data_dir / f".{STATE_FILE}.{os.getpid()}"
        try:
            # Whole or not at all: clients and the launcher read it as soon as it appears.
            partial.write_text(json.dumps(state, indent=2) + "\n")
            partial.replace(state_path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise ServerError(f"cannot write {state_path}: {err.strerror}") from None
        stack.callback(state_path.unlink, missing_ok=True)
        print(
            f"{READY_PREFIX} Ensign gRPC at {state['endpoint']}, auth at {state['auth_url']},"
            f" {_where_events_live(config, data_dir)}",
            flush=True,
        )

        stopping = asyncio.create_task(_wait_for_stop(config.exit_with_parent))
        await asyncio.wait((stopping, committing), return_when=asyncio.FIRST_COMPLETED)
        failure = committing.exception() if committing.done() else None
        log.info("shutting down")
        await grpc_server.stop(grace=STOP_GRACE)
        stopping.cancel()
        committing.cancel()  # a commit is never cut in half: it runs without a pause
        await asyncio.gather(committing, stopping, return_exceptions=True)
        log.info("stopped: %d events committed since start", committer.committed)
        if committer.conflicts:
            log.info("%d commits were numbered again after another gateway's", committer.conflicts)
        if failure is not None:
            # A bug, never an expected condition: stop rather than take events that cannot be acked.
            log.critical("the committer failed", exc_info=failure)
            raise ServerError(f"the committer failed: {failure!r}; see the log")


def _where_events_live(config: ServerConfig, data_dir: Path) -> str:
    if config.store == "jetstream":
        return f"JetStream store {config.jetstream_name!r} at {', '.join(config.nats)}"
    return f"{config.store} store in {data_dir}"


def _configured_tls(config: ServerConfig) -> TlsFiles | None:
    """The checked TLS files if the configuration names both, None if neither."""
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ServerError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    return load_tls(config.tls_cert, config.tls_key)


def _add_port(grpc_server: grpc.aio.Server, address: str, tls: TlsFiles | None) -> int:
    """Listen on ``address`` (over TLS if given) and return the port, or raise ServerError."""
    try:
        if tls is None:
            port = grpc_server.add_insecure_port(address)
        else:
            port = grpc_server.add_secure_port(address, grpc.ssl_server_credentials([(tls.key, tls.cert)]))
    except RuntimeError:
        port = 0
    if not port:
        raise ServerError(f"cannot listen on {address}")
    return port


async def _wait_for_stop(exit_with_parent: bool) -> None:
    """Return on SIGINT or SIGTERM, or when standard input closes if ``exit_with_parent``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if exit_with_parent:
        # The launcher holds our stdin pipe open; it closes when the launcher exits.
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    await stop.wait()
