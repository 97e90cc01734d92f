"""Authentication and project scoping, through the real pyensign client."""

import asyncio
import json
from urllib.request import urlopen

import grpc
import pytest
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc, event_pb2
from pyensign.ensign import Ensign
from pyensign.exceptions import EnsignRPCError, UnknownTopicError

from helpers.streams import json_event
from local_ensign.ids import new_ulid, parse_ulid
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run


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
