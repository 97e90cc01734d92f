"""Restricted API keys: each RPC checks the permission Ensign's API lists and names the one missing."""

import json
import subprocess

import pytest
from pyensign.ensign import Ensign
from pyensign.exceptions import EnsignRPCError

from helpers.streams import close_client, json_event
from local_ensign.credentials import create_key
from tests.conftest import AckCounter, run
from tests.test_cli import PYTHON

DASHBOARD = ("subscriber", "topics:read")  # can read and query, cannot write anything


def restricted_key(server, permissions) -> dict[str, str]:
    """A key of the tests' project holding only ``permissions``, made in the server's catalog."""
    return create_key(server.data_dir, server.project, permissions)


def test_a_read_only_key_subscribes_and_queries_but_may_not_publish_or_create_topics(server):
    credentials = restricted_key(server, DASHBOARD)

    async def body():
        owner = Ensign(**server.client_kwargs())
        await owner.ensure_topic_exists("watched")
        counter = AckCounter()
        await owner.publish("watched", json_event({"seq": 1}), on_ack=counter.on_ack)
        await counter.wait_for(1)
        await close_client(owner)
        dashboard = Ensign(**server.client_kwargs(credentials))
        cursor = await dashboard.query("SELECT * FROM watched")
        rows = [json.loads(event.data) for event in await cursor.fetchall()]
        names = [topic.name for topic in await dashboard.get_topics()]
        errors = {}
        for what, attempt in {
            "publish": lambda: dashboard.publish("watched", json_event({"seq": 2})),
            "create": lambda: dashboard.create_topic("not-allowed"),
            "info": lambda: dashboard.info(),
        }.items():
            with pytest.raises(EnsignRPCError) as raised:
                await attempt()
            errors[what] = raised.value
        await close_client(dashboard)
        return rows, names, errors

    rows, names, errors = run(body())
    assert rows == [{"seq": 1}] and "watched" in names
    assert {what: error.name for what, error in errors.items()} == dict.fromkeys(errors, "PERMISSION_DENIED")
    assert "publisher" in str(errors["publish"].details)
    assert "topics:create" in str(errors["create"].details)
    assert "metrics:read" in str(errors["info"].details)


def test_a_key_with_an_unknown_permission_is_refused_when_made(server):
    with pytest.raises(ValueError, match="unknown permission topics:write"):
        restricted_key(server, ("subscriber", "topics:write"))
    with pytest.raises(ValueError, match="at least one"):
        restricted_key(server, ())


def test_keys_create_makes_a_restricted_key_file_while_the_server_runs(server, tmp_path):
    key_file = tmp_path / "dashboard.json"
    made = subprocess.run(
        [
            *PYTHON,
            "keys",
            "create",
            "--data-dir",
            str(server.data_dir),
            "--project",
            server.project,
            "--permissions",
            "subscriber,topics:read",
            "--out",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    credentials = json.loads(key_file.read_text())

    async def body():
        dashboard = Ensign(**server.client_kwargs(credentials))
        names = [topic.name for topic in await dashboard.get_topics()]
        with pytest.raises(EnsignRPCError) as raised:
            await dashboard.create_topic("not-allowed-either")
        await close_client(dashboard)
        return names, raised.value

    names, error = run(body())
    assert isinstance(names, list)
    assert error.name == "PERMISSION_DENIED" and "topics:create" in str(error.details)
