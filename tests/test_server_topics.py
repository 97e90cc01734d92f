"""Topic management through the real pyensign client against a real local_ensign server."""

import pytest
from pyensign.exceptions import EnsignInvalidArgument, EnsignRPCError
from ulid import ULID

from tests.conftest import run


def test_status_reports_healthy(new_client):
    async def body():
        client = new_client()
        state = await client.status()
        await client.close()
        return state

    state = run(body())
    assert state.status == 1  # HEALTHY
    assert state.version


def test_ensure_topic_exists_twice_returns_the_same_id(new_client):
    async def body():
        first_client, second_client = new_client(), new_client()
        first = await first_client.ensure_topic_exists("reviews-ensure")
        again = await first_client.ensure_topic_exists("reviews-ensure")
        from_other_client = await second_client.ensure_topic_exists("reviews-ensure")
        await first_client.close()
        await second_client.close()
        return first, again, from_other_client

    first, again, from_other_client = run(body())
    assert len(first) == 26
    assert first == again == from_other_client


def test_create_topic_on_an_existing_name_is_already_exists(new_client):
    async def body():
        client = new_client()
        await client.create_topic("reviews-duplicate")
        try:
            with pytest.raises(EnsignRPCError) as raised:
                await client.create_topic("reviews-duplicate")
        finally:
            await client.close()
        return raised.value

    error = run(body())
    assert error.name == "ALREADY_EXISTS"


def test_invalid_topic_name_is_rejected_with_the_rule(new_client):
    async def body():
        client = new_client()
        try:
            with pytest.raises(EnsignInvalidArgument) as raised:
                await client.create_topic("9 starts with a digit")
        finally:
            await client.close()
        return raised.value

    error = run(body())
    assert "must start with a letter" in str(error.details)


def test_get_topics_pages_through_150_topics(new_client):
    names = [f"paged-{i:03d}" for i in range(150)]

    async def body():
        client = new_client()
        for name in names:
            await client.create_topic(name)
        topics = await client.get_topics()
        await client.close()
        return topics

    topics = run(body())
    listed = [topic.name for topic in topics]
    assert set(names) <= set(listed)
    assert len(listed) == len(set(listed))
    assert [name for name in listed if name.startswith("paged-")] == names  # creation order
    assert all(topic.project_id for topic in topics)


def test_topic_exists_for_unknown_name_is_false(new_client):
    async def body():
        client = new_client()
        exists = await client.topic_exists("never-created")
        await client.close()
        return exists

    assert run(body()) is False


def test_retrieve_topic_and_topic_names_through_the_low_level_client(new_client):
    async def body():
        client = new_client()
        topic_id = await client.ensure_topic_exists("low-level")
        found = await client.client.retrieve_topic(ULID.from_str(topic_id).bytes)
        names, token = await client.client.topic_names(page_size=500)
        with pytest.raises(EnsignRPCError) as missing:
            await client.client.retrieve_topic(ULID().bytes)
        await client.close()
        return topic_id, found, names, token, missing.value

    topic_id, found, names, token, missing = run(body())
    assert found.name == "low-level" and str(ULID.from_bytes(found.id)) == topic_id
    assert found.status == 1  # READY
    assert ("low-level", topic_id) in {(n.name, n.topic_id) for n in names} and token == ""
    assert missing.name == "NOT_FOUND"
