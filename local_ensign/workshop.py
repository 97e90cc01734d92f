"""Commands for workshops: ``topics``, ``tail TOPIC`` and ``query SQL`` against a running server.

Each is an ordinary pyensign client of the server running for a data directory (found
through its ``server.json``), with an API key like any other client: a key file
(``--key``), else ``ENSIGN_CLIENT_ID``/``ENSIGN_CLIENT_SECRET``, else the project's
workshop key kept in the data directory (made on first use).

Standard output carries only the topics table or the events, one per line (JSON data
as one line of JSON, anything else as its mimetype and size), so it can be piped;
notes such as "3 rows" go to standard error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from pyensign import mimetypes
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import (
    AuthenticationError,
    EnsignRPCError,
    InvalidQueryError,
    PyEnsignError,
    QueryNoRows,
)

from .discovery import WORKSHOP_PROJECT, project_key_file
from .launcher import ask_status
from .server import STATE_FILE, ServerError, read_state, serves_tls

# The project of the lessons' key (see discovery.attach_or_start), so by default these
# commands see the lessons' topics.
DEFAULT_PROJECT = WORKSHOP_PROJECT
STATUS_TIMEOUT = 5.0  # seconds to wait for the server to answer Status
OPEN_TIMEOUT = 30.0  # seconds a subscription may take to open
TOPICS_TIMEOUT = 120.0  # seconds the topics and their totals may take (Info reads every event)
CLOSE_TIMEOUT = 5.0  # seconds to wait for the client to close
WATCH_INTERVAL = 1.0  # seconds between the checks that the server still answers, while tailing
JSON_MIMETYPES = {mimetypes.ApplicationJSON, mimetypes.ApplicationJSONUTF8, mimetypes.ApplicationJSONLD}


@dataclass(frozen=True)
class TopicRow:
    """One line of ``topics``: the size is None when the server cannot say (no ``Info``)."""

    name: str
    id: str
    events: int
    size: int | None


def trust_ca(path: Path) -> bytes:
    """Trust the PEM CA certificate at ``path`` for TLS in this process, and return it.

    pyensign asks gRPC for its default roots and opens the auth URL with urllib's default
    context, so the CA goes into ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` and ``SSL_CERT_FILE``;
    gRPC reads its variable once, so this must run before the first TLS connection.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ServerError(f"cannot read CA certificate {path}: {err.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ServerError(f"CA certificate {path} holds no PEM certificate")
    resolved = str(Path(path).resolve())
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = resolved
    os.environ["SSL_CERT_FILE"] = resolved
    return data


def run(command: str, data_dir: Path, key: Path | None, project: str, ca: Path | None, **options) -> int:
    """Run ``topics``, ``tail`` or ``query`` as a client of the server running for ``data_dir``."""
    root_certificates = trust_ca(ca) if ca else None
    state = _running_server(data_dir, root_certificates)
    credentials = _credentials(data_dir, key, project)
    client = Ensign(
        client_id=credentials["ClientID"],
        client_secret=credentials["ClientSecret"],
        endpoint=state["endpoint"],
        insecure=not serves_tls(state),
        auth_url=state["auth_url"],
    )
    commands: dict[str, Callable[..., Awaitable[int]]] = {"topics": topics, "tail": tail, "query": query}
    # pyensign and asyncio log a client's passing trouble (a reconnect attempt, a task cut
    # short at exit) on the root logger; what matters ends the command with one line.
    logging.getLogger().addHandler(logging.NullHandler())
    # Event data is printed as it is; a terminal that cannot show a character gets an escape.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    return asyncio.run(_with_client(client, commands[command], **options))


def _running_server(data_dir: Path, root_certificates: bytes | None) -> dict:
    """The ``server.json`` of the server running for ``data_dir``, once it answers ``Status``."""
    state = read_state(data_dir)
    if not (isinstance(state, dict) and isinstance(state.get("endpoint"), str) and "auth_url" in state):
        raise ServerError(
            f"no local_ensign server is running for {data_dir} (no {STATE_FILE});"
            f" start one with: python -m local_ensign serve --data-dir {data_dir}"
        )
    endpoint = state["endpoint"]
    try:
        ask_status(endpoint, STATUS_TIMEOUT, tls=serves_tls(state), root_certificates=root_certificates)
    except grpc.RpcError as err:
        hint = "; is its CA trusted? (--ca FILE)" if serves_tls(state) else ""
        raise ServerError(f"no Ensign server answering at {endpoint} ({err.code().name}){hint}") from None
    return state


def _credentials(data_dir: Path, key: Path | None, project: str) -> dict[str, str]:
    """The API key to use: ``key`` if given, else the environment's, else the project's workshop key."""
    if key is not None:
        return _read_key_file(key)
    client_id, secret = os.environ.get("ENSIGN_CLIENT_ID"), os.environ.get("ENSIGN_CLIENT_SECRET")
    if client_id and secret:
        return {"ClientID": client_id, "ClientSecret": secret}
    if client_id or secret:
        missing = "ENSIGN_CLIENT_SECRET" if client_id else "ENSIGN_CLIENT_ID"
        raise ServerError(f"{missing} is not set; set both variables, or neither, or pass --key FILE")
    return _workshop_key(data_dir, project)


def _read_key_file(path: Path) -> dict[str, str]:
    """The ``ClientID`` and ``ClientSecret`` of a key file, as ``keys create --out`` writes it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ServerError(f"cannot read key file {path}: {err.strerror}") from None
    except ValueError:
        raise ServerError(f"key file {path} is not JSON") from None
    fields = [data.get(name) for name in ("ClientID", "ClientSecret")] if isinstance(data, dict) else []
    if len(fields) != 2 or not all(isinstance(value, str) and value for value in fields):
        raise ServerError(f"key file {path} has no ClientID and ClientSecret")
    return {"ClientID": fields[0], "ClientSecret": fields[1]}


def _workshop_key(data_dir: Path, project: str) -> dict[str, str]:
    """The project's key kept in the data directory, made on first use (see ``project_key_file``).

    For the default project that is the lessons' key, so the notebooks and these commands
    share one key instead of adding a key on every command.
    """
    try:
        return _read_key_file(project_key_file(data_dir, project))
    except ValueError as err:
        raise ServerError(f"{err}; pass --key FILE") from None


async def _with_client(client: Ensign, command: Callable[..., Awaitable[int]], **options) -> int:
    """Run a command with the client, turn client errors into one line, and always close the client."""
    try:
        return await command(client, **options)
    except AuthenticationError as err:
        raise ServerError(f"cannot authenticate: {_one_line(str(err))}") from None
    except EnsignRPCError as err:
        if err.name == "UNAUTHENTICATED":  # how a failed authentication reaches most calls
            raise ServerError(f"cannot authenticate: {_one_line(err.details)}") from None
        raise ServerError(_one_line(f"{err.name}: {err.details}")) from None
    except grpc.aio.AioRpcError as err:
        raise ServerError(_one_line(f"{err.code().name}: {err.details()}")) from None
    except PyEnsignError as err:
        raise ServerError(_one_line(str(err))) from None
    finally:
        await close_client(client)


async def close_client(client: Ensign) -> None:
    """Close the client within bounded time.

    pyensign 0.12.1b0's ``close()`` waits forever for a subscription whose buffer filled
    after its reader stopped (``tail --count`` stops reading); closing once more then
    releases the channel.
    """
    for _ in range(2):
        try:
            await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
            return
        except TimeoutError:
            continue
        except AttributeError:
            return  # pyensign 0.12.1b0 cannot close a client that never made a call; nothing is open


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_event(event: Event) -> str:
    """One line for an event: its JSON data on one line, else its mimetype and size."""
    if event.mimetype in JSON_MIMETYPES:
        try:
            return json.dumps(json.loads(event.data), ensure_ascii=False)
        except (ValueError, RecursionError):
            pass  # not JSON after all: describe it like any other data
    try:
        mimetype = mimetypes.to_str(event.mimetype)
    except ValueError:
        mimetype = f"mimetype {event.mimetype}"
    return f"({mimetype}, {len(event.data)} bytes)"


# topics --------------------------------------------------------------------------------


async def topics(client: Ensign) -> int:
    """Print one line per topic of the key's project: name, id, events and size in bytes."""
    try:
        rows = await asyncio.wait_for(topic_rows(client), TOPICS_TIMEOUT)
    except TimeoutError:
        raise ServerError(f"the server did not list the topics within {TOPICS_TIMEOUT:.0f} s") from None
    if not rows:
        print("no topics in this project", file=sys.stderr)
        return 0
    table = [("TOPIC", "ID", "EVENTS", "BYTES")]
    table += [(r.name, r.id, str(r.events), "-" if r.size is None else str(r.size)) for r in rows]
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    for name, topic_id, events, size in table:
        print(f"{name:<{widths[0]}}  {topic_id:<{widths[1]}}  {events:>{widths[2]}}  {size:>{widths[3]}}")
    if any(r.size is None for r in rows):
        print("sizes unknown: Info is not implemented or not allowed for this key", file=sys.stderr)
    return 0


async def topic_rows(client: Ensign) -> list[TopicRow]:
    """The project's topics with their event counts and sizes from ``Info``.

    Without ``Info`` (a server that lacks it, a key without ``metrics:read``) each topic's
    event count is still the ``offset`` that ``ListTopics`` gives; the size is then unknown.
    """
    listed = await client.get_topics()
    try:
        info = await client.info()
    except EnsignRPCError as err:
        if err.name not in ("UNIMPLEMENTED", "PERMISSION_DENIED"):
            raise
        return [TopicRow(t.name, str(t.id), t.offset, None) for t in listed]
    totals = {str(t.id): t for t in info.topics}
    rows = []
    for topic in listed:
        counted = totals.get(str(topic.id))
        rows.append(
            TopicRow(
                topic.name,
                str(topic.id),
                counted.events if counted else topic.offset,
                counted.data_size_bytes if counted else None,
            )
        )
    return rows


# tail ----------------------------------------------------------------------------------


async def tail(client: Ensign, topic: str, count: int | None = None) -> int:
    """Print the topic's events as they are committed, until ``count`` events, Ctrl-C or the server stops."""
    if not await client.topic_exists(topic):
        raise ServerError(f"no topic named {topic!r} in this project (see: python -m local_ensign topics)")
    events = client.subscribe(topic)
    upcoming = asyncio.ensure_future(anext(events))
    watch = asyncio.ensure_future(_server_gone(client))
    try:
        await _subscription_opened(client, topic, upcoming)
        print(f"tailing {topic!r} (Ctrl-C stops)", file=sys.stderr, flush=True)
        seen = 0
        while True:
            await asyncio.wait({upcoming, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not upcoming.done():
                raise ServerError("the server stopped answering")
            try:
                event = upcoming.result()
            except StopAsyncIteration:
                break
            print(format_event(event), flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
            upcoming = asyncio.ensure_future(anext(events))
    finally:
        for task in (upcoming, watch):
            task.cancel()
        await asyncio.gather(upcoming, watch, return_exceptions=True)
        await events.aclose()
    return 0


async def _server_gone(client: Ensign) -> None:
    """Return once the server stops answering ``Status`` (asked every ``WATCH_INTERVAL`` seconds).

    pyensign 0.12.1b0 retries a broken subscription for five minutes before it says so.
    """
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            await asyncio.wait_for(client.status(), STATUS_TIMEOUT)
        except (PyEnsignError, TimeoutError):
            return


async def _subscription_opened(client: Ensign, topic: str, first: asyncio.Future) -> None:
    """Wait until the server has opened the subscription, so that no event committed after it is missed.

    pyensign adds the topics of the server's ``ready`` reply to the client's topic cache
    when a subscription opens, and only then (``topic_exists`` leaves the cache alone).
    Raises what opening the subscription raised, if it failed.
    """
    deadline = time.monotonic() + OPEN_TIMEOUT
    while not client.topics.exists(topic) and not first.done():
        if time.monotonic() > deadline:
            raise ServerError(f"the subscription to {topic!r} did not open within {OPEN_TIMEOUT:.0f} s")
        await asyncio.sleep(0.01)
    if first.done() and first.exception() is not None:
        first.result()


# query ---------------------------------------------------------------------------------


async def query(client: Ensign, sql: str) -> int:
    """Print every event an EnSQL query selects, then the number of rows."""
    try:
        cursor = await client.query(sql)
    except QueryNoRows:
        print("no rows", file=sys.stderr)
        return 0
    except InvalidQueryError as err:
        raise ServerError(f"invalid query: {_one_line(str(err))}") from None
    rows = 0
    try:
        async for event in cursor:
            print(format_event(event), flush=True)
            rows += 1
    finally:
        cursor.close()
    print(f"{rows} row{'' if rows == 1 else 's'}", file=sys.stderr)
    return 0
