"""Authentication and project scoping, through the real pyensign client."""

import asyncio
import http.client
import json
import os
import socket
import stat
import statistics
import threading
import time
from urllib.request import urlopen

import grpc
import jwt
import pytest
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc, event_pb2
from pyensign.ensign import Ensign
from pyensign.exceptions import EnsignRPCError, UnknownTopicError

from helpers.streams import json_event
from local_ensign.auth_http import MAX_BODY, READ_TIMEOUT
from local_ensign.credentials import write_key_file
from local_ensign.ids import new_ulid, parse_ulid
from local_ensign.jetstream_catalog import shared_catalog
from local_ensign.launcher import LaunchError, LocalEnsign
from local_ensign.server import read_state
from local_ensign.tokens import ALGORITHM, SigningKeyError, TokenIssuer, load_signing_key
from tests.conftest import AckCounter, run

SERVER_STORES = ("sqlite", "jetstream")  # the stores with a catalog of their own


def wrong_secret_kwargs(server: LocalEnsign) -> dict:
    kwargs = server.client_kwargs()
    kwargs["client_secret"] = "not-the-secret"
    return kwargs


@pytest.mark.parametrize("call", ["status", "publish", "subscribe"])
def test_wrong_secret_is_unauthenticated(server, call):
    async def body():
        client = Ensign(**wrong_secret_kwargs(server))
        try:
            with pytest.raises(EnsignRPCError) as raised:
                if call == "status":
                    await client.status()
                elif call == "publish":
                    await client.publish("anything", json_event({"seq": 1}))
                else:
                    async for _ in client.subscribe("anything"):
                        break
        finally:
            await asyncio.wait_for(client.close(), 5)
        return raised.value

    error = run(body(), timeout=30)
    assert error.name == "UNAUTHENTICATED"
    assert "403" in str(error.details)


def test_token_signed_with_another_key_is_rejected(server, tmp_path):
    """A client authenticated by another server (another signing key) is turned away."""
    with LocalEnsign(tmp_path / "other", project="tests") as other:
        kwargs = other.client_kwargs()
        kwargs["endpoint"] = server.endpoint  # tokens from `other`, calls to `server`

        async def body():
            client = Ensign(**kwargs)
            try:
                with pytest.raises(EnsignRPCError) as raised:
                    await client.get_topics()
            finally:
                await client.close()
            return raised.value

        error = run(body(), timeout=30)
    assert error.name == "UNAUTHENTICATED"
    assert "invalid credentials" in str(error.details)


def test_raw_call_without_a_token_is_unauthenticated(server):
    async def body():
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            stub = ensign_pb2_grpc.EnsignStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListTopics(ensign_pb2.PageInfo())
            status = await stub.Status(ensign_pb2.HealthCheck())  # Status is public
        return raised.value, status

    error, status = run(body())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing credentials"
    assert status.status == ensign_pb2.ServiceState.Status.HEALTHY


def test_expired_access_token_is_refreshed_and_calls_keep_working(tmp_path):
    with LocalEnsign(tmp_path / "short", project="tests", access_ttl=1.5) as server:

        async def body():
            client = Ensign(**server.client_kwargs())
            first = await client.ensure_topic_exists("refreshing")
            await asyncio.sleep(2.5)  # the access token has expired by now
            topics = await client.get_topics()
            counter = AckCounter()
            await client.publish("refreshing", json_event({"seq": 1}), on_ack=counter.on_ack)
            await counter.wait_for(1)
            await client.close()
            return first, topics, counter

        first, topics, counter = run(body())
        log = server.log_path.read_text()
    assert [topic.name for topic in topics] == ["refreshing"]
    assert str(topics[0].id) == first
    assert len(counter.acks) == 1
    assert log.count('"POST /v1/authenticate HTTP/1.1" 200') == 1
    assert '"POST /v1/refresh HTTP/1.1" 200' in log


def test_a_project_cannot_see_or_use_another_projects_topics(server):
    other_key = server.create_key("another-project")

    async def body():
        owner = Ensign(**server.client_kwargs())
        outsider = Ensign(**server.client_kwargs(other_key))
        secret_id = await owner.ensure_topic_exists("owners-only")
        await outsider.ensure_topic_exists("outsiders-own")
        outcome = {
            "listed": [t.name for t in await outsider.get_topics()],
            "exists": await outsider.topic_exists("owners-only"),
        }
        with pytest.raises(UnknownTopicError):
            await outsider.publish("owners-only", json_event({"seq": 1}))
        fresh = Ensign(**server.client_kwargs(other_key))  # a failed subscribe spoils its client
        with pytest.raises(EnsignRPCError) as raised:
            async for _ in fresh.subscribe(secret_id):
                break
        outcome["subscribe"] = raised.value.name
        await asyncio.wait_for(fresh.close(), 5)
        outcome["raw_publish"] = await raw_publish_to(server, other_key, secret_id)
        await owner.close()
        await outsider.close()
        return outcome

    outcome = run(body())
    assert outcome["listed"] == ["outsiders-own"]
    assert outcome["exists"] is False
    assert outcome["subscribe"] == "FAILED_PRECONDITION"
    assert outcome["raw_publish"] == ensign_pb2.Nack.Code.TOPIC_UNKNOWN


async def raw_publish_to(server: LocalEnsign, credentials: dict, topic_id: str) -> int:
    """Publish one event straight onto the wire to a topic id; return the nack code (0 if acked)."""
    body = json.dumps({"client_id": credentials["ClientID"], "client_secret": credentials["ClientSecret"]})
    with urlopen(f"{server.auth_url}/v1/authenticate", body.encode(), timeout=10) as reply:
        token = json.load(reply)["access_token"]
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        stream = ensign_pb2_grpc.EnsignStub(channel).Publish(metadata=(("authorization", f"Bearer {token}"),))
        await stream.write(ensign_pb2.PublisherRequest(open_stream=ensign_pb2.OpenStream(client_id="raw")))
        ready = await stream.read()
        assert ready.WhichOneof("embed") == "ready"
        wrapper = event_pb2.EventWrapper(
            topic_id=parse_ulid(topic_id),
            local_id=new_ulid(),
            event=event_pb2.Event(data=b"{}").SerializeToString(),
        )
        await stream.write(ensign_pb2.PublisherRequest(event=wrapper))
        reply = await stream.read()
        stream.cancel()
    return reply.nack.code if reply.WhichOneof("embed") == "nack" else 0


def test_auth_endpoint_answers_bad_requests_with_400_and_403(server):
    from urllib.error import HTTPError
    from urllib.request import Request

    def status_of(path: str, body: bytes | dict) -> int:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            with urlopen(Request(f"{server.auth_url}{path}", data=data), timeout=10) as reply:
                return reply.status
        except HTTPError as err:
            return err.code

    assert status_of("/v1/authenticate", b"not json") == 400
    assert status_of("/v1/authenticate", {"client_id": "", "client_secret": ""}) == 400
    assert status_of("/v1/authenticate", {"client_id": "nobody", "client_secret": "x"}) == 403
    assert status_of("/v1/refresh", {"refresh_token": "not.a.jwt"}) == 403


# Helpers for the auth endpoint ------------------------------------------------------------


def credentials_body(credentials: dict[str, str]) -> bytes:
    """The JSON body pyensign posts to authenticate with ``credentials``."""
    return json.dumps(
        {"client_id": credentials["ClientID"], "client_secret": credentials["ClientSecret"]}
    ).encode()


def post(server: LocalEnsign, body: bytes, path: str = "/v1/authenticate") -> tuple[int, dict]:
    """POST ``body`` on a new connection, as pyensign does; return the status and the JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", server.auth_port, timeout=30)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def assert_still_serving(server: LocalEnsign) -> None:
    """Valid credentials still get a token."""
    status, answer = post(server, credentials_body(server.credentials))
    assert status == 200 and answer["access_token"]


# Signing key ------------------------------------------------------------------------------


def test_a_new_signing_key_is_private_and_64_hex_characters(tmp_path):
    key = load_signing_key(tmp_path)
    path = tmp_path / "signing.key"
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(text) == 64 and bytes.fromhex(text) == key
    assert load_signing_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"ab" * 8, b"ab" * 33, b"g" * 64, b"\xff\xfe\x00 not a key \x80", b"ab cd" * 16],
    ids=["empty", "blank", "short", "long", "not-hex", "binary", "spaced-hex"],
)
def test_an_unusable_signing_key_file_is_refused(tmp_path, content):
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError) as raised:
        load_signing_key(tmp_path)
    message = str(raised.value)
    assert str(path) in message
    assert "\n" not in message
    assert "delete it" in message
    assert path.read_bytes() == content  # left for the user to look at, not silently replaced


def test_a_token_issuer_refuses_a_short_key():
    with pytest.raises(ValueError):
        TokenIssuer(b"")
    with pytest.raises(ValueError):
        TokenIssuer(b"k" * 31)


def access_token(server: LocalEnsign) -> str:
    """A fresh access token for the server's own key."""
    status, answer = post(server, credentials_body(server.credentials))
    assert status == 200
    return answer["access_token"]


def list_topics_with(server: LocalEnsign, token: str) -> grpc.StatusCode:
    """The status code of a raw ListTopics call made with ``token``."""
    with grpc.insecure_channel(server.endpoint) as channel:
        stub = ensign_pb2_grpc.EnsignStub(channel)
        try:
            stub.ListTopics(
                ensign_pb2.PageInfo(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def resign(token: str, key: bytes) -> str:
    """The same claims as ``token``, signed with ``key``."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def signing_key_of(server) -> bytes:
    """The key the server signs tokens with: in its data directory, or in the JetStream catalog."""
    if server.store != "jetstream":
        return bytes.fromhex((server.data_dir / "signing.key").read_text())
    state = read_state(server.data_dir)
    with shared_catalog(state["nats"], state["jetstream_name"]) as catalog:
        return catalog.signing_key()


def test_a_token_forged_with_the_empty_key_is_rejected(server):
    token = access_token(server)
    real_key = signing_key_of(server)
    assert list_topics_with(server, resign(token, real_key)) == grpc.StatusCode.OK  # the claims are right
    assert list_topics_with(server, resign(token, b"")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_server_never_runs_with_an_empty_signing_key(tmp_path):
    """An empty key file (a first start cut short) stops the server instead of signing with b""."""
    data_dir = tmp_path / "empty-key"
    data_dir.mkdir()
    (data_dir / "signing.key").write_bytes(b"")
    server = LocalEnsign(data_dir, project="tests")
    try:
        with pytest.raises(LaunchError) as raised:
            server.start()
    finally:
        server.stop()
    assert "signing.key is empty" in str(raised.value)


# Key files --------------------------------------------------------------------------------


def test_a_key_file_written_over_a_readable_file_becomes_private(tmp_path):
    path = tmp_path / "key.json"
    path.write_text("old contents, long enough to show whether the file was truncated\n")
    os.chmod(path, 0o644)
    credentials = {"ClientID": "an-id", "ClientSecret": "a-secret"}
    write_key_file(path, credentials)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == credentials


# Auth endpoint ----------------------------------------------------------------------------


def forbidden_time_ratio(server: LocalEnsign, rounds: int = 15) -> float:
    """Median time of a 403 for an unknown client id over that for a wrong secret, side by side."""
    wrong_secret = dict(server.credentials, ClientSecret="not-the-secret")
    unknown_id = {"ClientID": "nobody" * 5, "ClientSecret": "not-the-secret"}
    timings: dict[str, list[float]] = {"wrong_secret": [], "unknown_id": []}
    for _ in range(rounds):
        for name, credentials in (("wrong_secret", wrong_secret), ("unknown_id", unknown_id)):
            started = time.perf_counter()
            status, _ = post(server, credentials_body(credentials))
            timings[name].append(time.perf_counter() - started)
            assert status == 403
    return statistics.median(timings["unknown_id"]) / statistics.median(timings["wrong_secret"])


def test_an_unknown_client_id_takes_as_long_as_a_wrong_secret(server):
    """The time of a 403 must not tell whether the client id exists.

    A busy machine can skew one measurement, so there are up to three; an endpoint that
    answers unknown ids faster shows it in every one of them.
    """
    forbidden_time_ratio(server, rounds=2)  # warm both paths up
    ratios = []
    for _ in range(3):
        ratios.append(forbidden_time_ratio(server))
        if ratios[-1] >= 0.5:
            break
    assert ratios[-1] >= 0.5, f"unknown ids answer {ratios} times as long as wrong secrets"


def test_two_hundred_clients_authenticating_at_once_all_get_tokens(server):
    clients = 200
    barrier = threading.Barrier(clients)
    outcomes: list[object] = []

    def authenticate() -> None:
        body = credentials_body(server.credentials)
        barrier.wait()
        try:
            status, answer = post(server, body)
            outcomes.append((status, bool(answer.get("access_token"))))
        except OSError as err:
            outcomes.append(repr(err))

    threads = [threading.Thread(target=authenticate) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    failures = [outcome for outcome in outcomes if outcome != (200, True)]
    assert len(outcomes) == clients and not failures, failures[:5]


def raw_request(
    body: bytes, headers: dict[str, str | None] | None = None, path: str = "/v1/authenticate"
) -> bytes:
    """An HTTP/1.1 POST with ``body``; header values override (None removes) the defaults."""
    fields: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    lines = [f"POST {path} HTTP/1.1"] + [
        f"{name}: {value}" for name, value in fields.items() if value is not None
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(server: LocalEnsign, request: bytes, *, close_write: bool = False) -> tuple[int, bytes]:
    """Send raw bytes, optionally close our sending side, and read the one answer."""
    with socket.create_connection(("127.0.0.1", server.auth_port), timeout=READ_TIMEOUT + 10) as sock:
        sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, reply.read()


# Unknown but well-formed credentials: a server that read one of the requests below as valid
# would answer 403, not 400.
UNKNOWN = json.dumps({"client_id": "someone", "client_secret": "something"}).encode()
LENGTH = str(len(UNKNOWN))
MALFORMED = {
    "nested-arrays": raw_request(b"[" * 50_000),
    "nested-objects": raw_request(b'{"a":' * 10_000),
    "nested-in-a-field": raw_request(b'{"client_id": ' + b"[" * 50_000),
    "array": raw_request(b"[]"),
    "string": raw_request(b'"client_id"'),
    "number": raw_request(b"42"),
    "null": raw_request(b"null"),
    "latin-1": raw_request('{"client_id": "Zoë", "client_secret": "é"}'.encode("latin-1")),
    "utf-16": raw_request(UNKNOWN.decode().encode("utf-16")),
    "utf-8-bom": raw_request(b"\xef\xbb\xbf" + UNKNOWN),
    "not-json": raw_request(b"not json"),
    "trailing-comma": raw_request(b'{"client_id": "a", "client_secret": "b",}'),
    "truncated-json": raw_request(b'{"client_id": "a", "client_se'),
    "huge-integer": raw_request(b'{"client_id": ' + b"9" * 5000 + b"}"),
    "no-content-length": raw_request(UNKNOWN, {"Content-Length": None}),
    "zero-content-length": raw_request(b"", {"Content-Length": "0"}),
    "negative-content-length": raw_request(b"", {"Content-Length": "-5"}),
    "word-content-length": raw_request(b"", {"Content-Length": "ten"}),
    "underscored-content-length": raw_request(UNKNOWN, {"Content-Length": f"{LENGTH[:-1]}_{LENGTH[-1]}"}),
    "signed-content-length": raw_request(UNKNOWN, {"Content-Length": f"+{LENGTH}"}),
    "hex-content-length": raw_request(b"", {"Content-Length": "0x10"}),
    "oversized-content-length": raw_request(b"", {"Content-Length": str(MAX_BODY + 1)}),
    "oversized-body": raw_request(b"{" + b" " * MAX_BODY + b"}"),
    "enormous-content-length": raw_request(b"", {"Content-Length": "9" * 30}),
    "two-content-lengths": raw_request(UNKNOWN).replace(
        f"Content-Length: {LENGTH}\r\n".encode(),
        f"Content-Length: {LENGTH}\r\nContent-Length: 2\r\n".encode(),
    ),
    "chunked-and-content-length": raw_request(UNKNOWN, {"Transfer-Encoding": "chunked"}),
    "chunked": raw_request(
        b"5\r\n{}   \r\n0\r\n\r\n", {"Content-Length": None, "Transfer-Encoding": "chunked"}
    ),
    "id-not-a-string": raw_request(b'{"client_id": 123, "client_secret": "x"}'),
    "secret-not-a-string": raw_request(b'{"client_id": "x", "client_secret": ["x"]}'),
    "id-null": raw_request(b'{"client_id": null, "client_secret": "x"}'),
    "id-lone-surrogate": raw_request(b'{"client_id": "\\ud800", "client_secret": "x"}'),
    "secret-lone-surrogate": raw_request(b'{"client_id": "x", "client_secret": "\\udfff"}'),
    "refresh-token-not-a-string": raw_request(b'{"refresh_token": {"a": 1}}', path="/v1/refresh"),
    "refresh-token-lone-surrogate": raw_request(b'{"refresh_token": "a.b\\ud800"}', path="/v1/refresh"),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_gets_a_json_400_and_the_endpoint_keeps_serving(server, request_bytes):
    status, body = exchange(server, request_bytes)
    assert status == 400
    assert json.loads(body)["success"] is False
    assert_still_serving(server)


def test_a_body_cut_short_by_the_client_gets_a_json_400(server):
    """A client that promises more bytes than it sends, then closes its side, is not half-read."""
    body = credentials_body(server.credentials)  # valid credentials: only the length is wrong
    status, answer = exchange(
        server, raw_request(body, {"Content-Length": str(len(body) + 10)}), close_write=True
    )
    assert status == 400
    assert json.loads(answer)["success"] is False
    assert_still_serving(server)


def closed_within(sock: socket.socket, deadline: float) -> bool:
    """True if the server closes ``sock`` (end of stream or reset) before ``deadline``."""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_silent_and_stalled_connections_are_closed_while_others_are_served(server):
    body = credentials_body(server.credentials)
    stalls = {
        "silent": b"",
        "half-a-request-line": b"POST /v1/authen",
        "half-the-headers": b"POST /v1/authenticate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
        "half-the-body": raw_request(body)[: -(len(body) // 2)],
    }
    started = time.monotonic()
    sockets = {name: socket.create_connection(("127.0.0.1", server.auth_port)) for name in stalls}
    try:
        for name, data in stalls.items():
            sockets[name].sendall(data)
        idle = socket.create_connection(("127.0.0.1", server.auth_port))
        sockets["idle-after-an-answer"] = idle
        idle.sendall(raw_request(body))
        reply = http.client.HTTPResponse(idle)
        reply.begin()
        assert reply.status == 200 and json.loads(reply.read())["access_token"]

        assert_still_serving(server)
        deadline = started + READ_TIMEOUT + 5
        still_open = [name for name, sock in sockets.items() if not closed_within(sock, deadline)]
    finally:
        for sock in sockets.values():
            sock.close()
    assert not still_open
    assert_still_serving(server)
