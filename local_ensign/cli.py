"""Command line: ``python -m local_ensign serve | keys create | status | topics | tail | query``.

``topics``, ``tail`` and ``query`` are clients of a running server (see ``workshop``).

Every problem a user can fix (a bad flag, a port in use, a data directory that
cannot be used, no server answering) ends with one line on standard error and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

import grpc
from pyensign.api.v1beta1 import ensign_pb2

from . import __version__, workshop
from .cluster import LocalCluster
from .credentials import create_key, write_key_file
from .discovery import create_key_file, default_data_dir
from .groups import DELIVERY_TIMEOUT, MAX_UNACKED, GroupSettings
from .launcher import LaunchError, ask_status
from .nats_launcher import NatsLaunchError
from .server import (
    DEFAULT_AUTH_PORT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ServerConfig,
    ServerError,
    prepare_data_dir,
    read_state,
    serve,
    serves_tls,
)
from .tokens import PERMISSIONS


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line (``--help`` still shows usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _jetstream_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use 1-64 letters, digits, '-' or '_'")
    return text


def _replicas(text: str) -> int:
    if text not in {"1", "2", "3", "4", "5"}:
        raise argparse.ArgumentTypeError(f"{text!r}: JetStream keeps 1 to 5 replicas")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="local_ensign", description="A local Ensign server for the pyensign client.")
    parser.add_argument("--version", action="version", version=f"local_ensign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    default_dir = str(default_data_dir()).replace("%", "%%")  # argparse %-formats help texts
    data_help = f"data directory (default: {default_dir}; $LOCAL_ENSIGN_DATA_DIR sets it)"
    ca_help = "PEM CA certificate to trust for a TLS server (default: $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"

    run = commands.add_parser("serve", help="run the server in the foreground")
    run.add_argument("--data-dir", type=Path, default=None, help=data_help)
    run.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    run.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="gRPC port (default %(default)s; 0 picks a free one)"
    )
    run.add_argument(
        "--auth-port",
        type=_port,
        default=DEFAULT_AUTH_PORT,
        help="auth endpoint port (default %(default)s; 0 picks a free one)",
    )
    run.add_argument(
        "--store",
        choices=("sqlite", "memory", "jetstream"),
        default="sqlite",
        help="where events live: durable SQLite (default), memory only, or a NATS JetStream cluster"
        " shared by several servers (with --nats)",
    )
    run.add_argument(
        "--nats",
        default="",
        metavar="URL[,URL...]",
        help="the JetStream store's NATS nodes, e.g. nats://127.0.0.1:4222 (any node will do; more"
        " let a server reconnect when one is down)",
    )
    run.add_argument(
        "--jetstream-name",
        default="local-ensign",
        type=_jetstream_name,
        help="names the JetStream stream and buckets: servers with the same name share projects,"
        " keys, topics and events (default %(default)s)",
    )
    run.add_argument(
        "--replicas",
        type=_replicas,
        default=1,
        help="copies JetStream keeps of the stream and buckets (1-5, at most the cluster's nodes;"
        " default %(default)s)",
    )
    run.add_argument(
        "--sync",
        choices=("full", "normal"),
        default="full",
        help="full: fsync every commit (default); normal: survive a killed server, not a power cut",
    )
    run.add_argument(
        "--access-ttl",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="access token lifetime (default one hour)",
    )
    run.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when standard input closes (used by the launcher)",
    )
    run.add_argument(
        "--max-unacked",
        type=_count,
        default=MAX_UNACKED,
        metavar="N",
        help="events a consumer-group member may hold unacked (default %(default)s; keep it above a"
        " trainer's checkpoint interval)",
    )
    run.add_argument(
        "--delivery-timeout",
        type=_positive,
        default=DELIVERY_TIMEOUT,
        metavar="SECONDS",
        help="when a group sets none: seconds before an unacked event may go to another member"
        " (default %(default)g)",
    )
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    run.add_argument(
        "--tls-cert", type=Path, default=None, metavar="FILE", help="PEM certificate: serve over TLS only"
    )
    run.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="the certificate's unencrypted PEM key"
    )

    cluster = commands.add_parser(
        "cluster", help="run a NATS JetStream cluster and gateways sharing one log, in the foreground"
    )
    cluster.add_argument("--nodes", type=_count, default=3, help="NATS nodes (default %(default)s)")
    cluster.add_argument("--gateways", type=_count, default=2, help="Ensign gateways (default %(default)s)")
    cluster.add_argument(
        "--project", default="local", help="project of the printed API key (default %(default)s)"
    )
    cluster.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where nodes and gateways keep their files (default: a new"
        " temporary directory, deleted at the end)",
    )

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, parser_class=_OneLineParser
    )
    create = keys.add_parser("create", help="create an API key for a project (made if new)")
    create.add_argument("--data-dir", type=Path, default=None, help=data_help)
    create.add_argument("--project", required=True, help="project name")
    create.add_argument(
        "--out", type=Path, default=None, help="write the key file here (mode 600) instead of printing it"
    )
    create.add_argument(
        "--permissions",
        default=None,
        metavar="P,P,...",
        help=f"only these permissions (default: all of {', '.join(PERMISSIONS)})",
    )

    status = commands.add_parser("status", help="ask a running server whether it is healthy")
    status.add_argument("--data-dir", type=Path, default=None, help=data_help)
    status.add_argument(
        "--endpoint",
        default=None,
        help="host:port to ask (default: the data directory's server, else 127.0.0.1:5356)",
    )
    status.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds to wait (default %(default)s)"
    )
    status.add_argument("--ca", type=Path, default=None, metavar="FILE", help=ca_help + ")")

    topics = commands.add_parser("topics", help="list the project's topics with event counts and sizes")
    tail = commands.add_parser("tail", help="print a topic's events as they arrive")
    tail.add_argument("topic", help="topic name")
    tail.add_argument("--count", type=_count, default=None, metavar="N", help="stop after N events")
    query = commands.add_parser("query", help="run an EnSQL query and print the events it selects")
    query.add_argument("sql", metavar="SQL", help='e.g. "SELECT * FROM topic LIMIT 10"')
    for client in (topics, tail, query):
        client.add_argument("--data-dir", type=Path, default=None, help=data_help + "; its server is used")
        client.add_argument(
            "--key",
            type=Path,
            default=None,
            metavar="FILE",
            help="API key file (default: $ENSIGN_CLIENT_ID/$ENSIGN_CLIENT_SECRET, else the project's key)",
        )
        client.add_argument(
            "--project",
            default=workshop.DEFAULT_PROJECT,
            help="project of the data directory's key, used without --key (default %(default)s)",
        )
        client.add_argument(
            "--ca", type=Path, default=None, metavar="FILE", help=ca_help + ", and $SSL_CERT_FILE for auth)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        # A client's failures end in one line of ours; gRPC would also log each failed
        # connection attempt (an untrusted certificate, say) on standard error.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "keys":
            return _keys_create(args)
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "status":
            return _status(args)
        return _client_command(args)
    except ServerError as err:
        print(f"local_ensign: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``... | head``): stop quietly, and keep the
        # interpreter's final flush from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if (args.store == "jetstream") != bool(args.nats):
        raise ServerError("--store jetstream needs --nats URL[,URL...], and --nats needs --store jetstream")
    config = ServerConfig(
        data_dir=args.data_dir or default_data_dir(),
        host=args.host,
        port=args.port,
        auth_port=args.auth_port,
        store=args.store,
        nats=tuple(url.strip() for url in args.nats.split(",") if url.strip()),
        jetstream_name=args.jetstream_name,
        replicas=args.replicas,
        sync=args.sync,
        exit_with_parent=args.exit_with_parent,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        groups=GroupSettings(max_unacked=args.max_unacked, delivery_timeout=args.delivery_timeout),
    )
    if args.access_ttl:
        config.access_ttl = args.access_ttl
    asyncio.run(serve(config))
    return 0


def _cluster(args: argparse.Namespace) -> int:
    """Run a LocalCluster until Ctrl-C or SIGTERM, after printing how to reach each gateway."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cluster = LocalCluster(args.nodes, args.gateways, data_dir=args.data_dir, project=args.project)
    try:
        cluster.start()
    except (LaunchError, NatsLaunchError) as err:
        cluster.cleanup()
        raise ServerError(str(err)) from None
    first = cluster.gateways[0]
    key_file = cluster.data_dir / f"{args.project}-key.json"
    write_key_file(key_file, cluster.credentials)
    print(
        f"local_ensign cluster ready: {args.nodes} NATS node(s) ({', '.join(cluster.nats.urls)}),"
        f" every stream and bucket kept {cluster.replicas} time(s); {args.gateways} gateway(s)"
    )
    for index, gateway in enumerate(cluster.gateways):
        print(
            f"  gateway {index}: ENSIGN_ENDPOINT={gateway.endpoint} ENSIGN_AUTH_URL={gateway.auth_url}"
            " ENSIGN_INSECURE=true"
        )
    print(
        f"Every gateway accepts the key of project {args.project!r} in {key_file}; point a client at one:\n"
        f"  export ENSIGN_CLIENT_ID={cluster.credentials['ClientID']}"
        f" ENSIGN_CLIENT_SECRET={cluster.credentials['ClientSecret']}\n"
        f"  export ENSIGN_ENDPOINT={first.endpoint} ENSIGN_AUTH_URL={first.auth_url} ENSIGN_INSECURE=true\n"
        "Ctrl-C stops the cluster.",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        print("stopping the cluster", flush=True)
        cluster.cleanup()
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    data_dir = prepare_data_dir(args.data_dir or default_data_dir())
    permissions = (
        None if args.permissions is None else [p.strip() for p in args.permissions.split(",") if p.strip()]
    )
    try:
        if args.out is None:
            print(json.dumps(create_key(data_dir, args.project, permissions), indent=2))
            return 0
        create_key_file(args.out, data_dir, args.project, permissions)
    except ValueError as err:
        raise ServerError(f"{err} (choose from {', '.join(PERMISSIONS)})") from None
    print(f"wrote API key for project {args.project!r} to {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Ask for ``Status``: over TLS when given ``--ca`` or when the data directory's server uses TLS."""
    root_certificates = workshop.trust_ca(args.ca) if args.ca else None
    endpoint, tls = args.endpoint, root_certificates is not None
    if endpoint is None:
        state = read_state(args.data_dir or default_data_dir())
        endpoint = state["endpoint"] if state else f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        tls = tls or (state is not None and serves_tls(state))
    try:
        state = ask_status(endpoint, args.timeout, tls=tls, root_certificates=root_certificates)
    except grpc.RpcError as err:
        hint = "; is its CA trusted? (--ca FILE)" if tls else ""
        raise ServerError(f"no Ensign server answering at {endpoint} ({err.code().name}){hint}") from None
    status = ensign_pb2.ServiceState.Status.Name(state.status)
    print(f"{status}: Ensign {state.version} at {endpoint}, up {state.uptime.seconds}s")
    return 0 if status == "HEALTHY" else 1


def _client_command(args: argparse.Namespace) -> int:
    """``topics``, ``tail`` or ``query``: a pyensign client of the data directory's server."""
    options: dict = {}
    if args.command == "tail":
        options = {"topic": args.topic, "count": args.count}
    elif args.command == "query":
        if not args.sql.strip():
            raise ServerError('the query is empty; try: "SELECT * FROM topic LIMIT 10"')
        options = {"sql": args.sql}
    data_dir = args.data_dir or default_data_dir()
    return workshop.run(args.command, data_dir, args.key, args.project, args.ca, **options)
