"""EnSQL through the real pyensign client: history in publish order, filters, projections, errors."""

import asyncio
import json
import threading
import time

import grpc
import pytest
from pyensign.api.v1beta1 import ensign_pb2_grpc, event_pb2, query_pb2
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import EnsignInvalidArgument, InvalidQueryError, QueryNoRows
from ulid import ULID

from helpers.streams import close_client, json_event
from local_ensign import wire
from local_ensign.eventlog import Record, SQLiteEventLog
from local_ensign.ids import RLIDSequence
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run
from tests.test_server_auth import access_token
from tests.test_server_load import resident_bytes

REVIEWS = [
    {"seq": n, "label": label, "domain": domain, "text": f"review {n}"}
    for n, (label, domain) in enumerate(
        [("positive", "tweets"), ("negative", "tweets"), ("positive", "movies"), ("positive", "tweets")] * 5
    )
]


async def publish_all(client: Ensign, topic: str, records: list[dict]) -> None:
    counter = AckCounter()
    await client.ensure_topic_exists(topic)
    for record in records:
        await client.publish(topic, json_event(record), on_ack=counter.on_ack, on_nack=counter.on_nack)
    await counter.wait_for(len(records))
    assert not counter.nacks


async def rows(client: Ensign, sql: str) -> list[dict]:
    cursor = await client.query(sql)
    return [json.loads(event.data) for event in await cursor.fetchall()]


@pytest.fixture(scope="module")
def reviews_topic(server):
    """A topic of 20 reviews from two domains, published once for the module's tests."""

    async def publish() -> None:
        client = Ensign(**server.client_kwargs())
        await publish_all(client, "reviews", REVIEWS)
        await close_client(client)

    run(publish())
    return "reviews"


def query_rows(server, *queries: str) -> list[list[dict]]:
    async def body():
        client = Ensign(**server.client_kwargs())
        try:
            return [await rows(client, sql) for sql in queries]
        finally:
            await close_client(client)

    return run(body())


def test_select_star_returns_every_event_in_publish_order(server, reviews_topic):
    (everything,) = query_rows(server, "SELECT * FROM reviews")
    assert everything == REVIEWS


def test_limit_offset_projection_and_where_select_what_they_say(server, reviews_topic):
    limited, offset, projected, filtered, either = query_rows(
        server,
        "SELECT * FROM reviews LIMIT 3",
        "select * from reviews offset 18",
        "SELECT text, label AS sentiment FROM reviews LIMIT 2",
        "SELECT seq FROM reviews WHERE label = 'positive' AND domain = 'tweets' OFFSET 1 LIMIT 4",
        "SELECT seq FROM reviews WHERE (domain = 'movies' OR seq >= 18) AND label <> 'negative';",
    )
    assert limited == REVIEWS[:3]
    assert offset == REVIEWS[18:]
    assert projected == [
        {"text": "review 0", "sentiment": "positive"},
        {"text": "review 1", "sentiment": "negative"},
    ]
    tweets = [r["seq"] for r in REVIEWS if r["label"] == "positive" and r["domain"] == "tweets"]
    assert [row["seq"] for row in filtered] == tweets[1:5]
    expected = [
        r["seq"] for r in REVIEWS if (r["domain"] == "movies" or r["seq"] >= 18) and r["label"] != "negative"
    ]
    assert [row["seq"] for row in either] == expected


def test_a_topic_named_like_a_keyword_can_be_queried(server):
    """Real Ensign's tokenizer read reserved words as prefixes, so ``orders`` (OR) failed to parse."""

    async def body():
        client = Ensign(**server.client_kwargs())
        await publish_all(client, "orders", [{"order": 1}, {"order": 2}])
        found = await rows(client, "SELECT * FROM orders WHERE order > 1")
        await close_client(client)
        return found

    assert run(body()) == [{"order": 2}]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FORM reviews", "position 9"),
        ("SELECT * FROM reviews WHERE label = ", "end of query"),
        ("SELECT * FROM no_such_topic", "unknown topic"),
    ],
)
def test_bad_queries_raise_invalid_query_error_naming_where(server, reviews_topic, sql, fragment):
    async def body():
        client = Ensign(**server.client_kwargs())
        try:
            with pytest.raises(InvalidQueryError) as raised:
                await client.query(sql)
        finally:
            await close_client(client)
        return str(raised.value)

    assert fragment in run(body())


def test_a_query_with_no_rows_raises_query_no_rows(server, reviews_topic):
    async def body():
        client = Ensign(**server.client_kwargs())
        await client.ensure_topic_exists("empty-topic")
        try:
            with pytest.raises(QueryNoRows):
                await client.query("SELECT * FROM empty-topic")
            with pytest.raises(QueryNoRows):
                await client.query("SELECT * FROM reviews WHERE label = 'neutral'")
        finally:
            await close_client(client)

    run(body())


def test_explain_says_what_it_will_scan(server, reviews_topic):
    """pyensign's ``explain_query`` raises NotImplementedError; ``client.explain`` reaches the RPC."""
    sql = "SELECT text FROM reviews WHERE domain = 'tweets' LIMIT 5"

    async def body():
        client = Ensign(**server.client_kwargs())
        try:
            answer = await client.client.explain(sql)
            with pytest.raises(EnsignInvalidArgument):
                await client.client.explain("SELECT FROM reviews")
        finally:
            await close_client(client)
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            call = ensign_pb2_grpc.EnsignStub(channel).Explain(
                query_pb2.Query(query=sql), metadata=(("authorization", f"Bearer {access_token(server)}"),)
            )
            await call
            plan = (await call.trailing_metadata()).get("ensql-plan")
        return answer, plan

    answer, plan = run(body())
    assert isinstance(answer, query_pb2.QueryExplanation)
    assert "reviews" in plan and "domain = 'tweets'" in plan and "5" in plan


def load_events(data_dir, topic_id: str, count: int) -> None:
    """Write ``count`` stored events into a stopped server's log, as the committer would."""
    log = SQLiteEventLog(data_dir)
    rlids, topic = RLIDSequence(log.last_rlid()), ULID.from_str(topic_id).bytes
    committed = event_pb2.EventWrapper().committed.SerializeToString()
    batch = []
    for offset in range(1, count + 1):
        event = Event(json.dumps({"seq": offset, "text": "x" * 200}).encode(), "application/json").proto()
        wrapper = wire.stored_wrapper(rlids.next(), topic, offset, b"", event.SerializeToString(), committed)
        batch.append(Record(topic, wrapper[2:12], wrapper))
        if len(batch) == 10_000:
            log.append(batch)
            batch = []
    log.append(batch)
    log.close()


@pytest.mark.slow
def test_a_query_over_200000_events_streams_in_bounded_memory(tmp_path):
    """The server reads the log a batch at a time: its memory grows by far less than the 60 MB of results."""
    total = 200_000
    server = LocalEnsign(tmp_path / "data", project="tests").start()
    try:

        async def create() -> str:
            client = Ensign(**server.client_kwargs())
            topic_id = await client.ensure_topic_exists("history")
            await close_client(client)
            return topic_id

        topic_id = run(create())
        server.stop()
        load_events(server.data_dir, topic_id, total)
        server.start()
        peak = [resident_bytes(server.process.pid)]
        baseline = peak[0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                peak.append(resident_bytes(server.process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def read_all() -> tuple[int, int]:
            client = Ensign(**server.client_kwargs())
            cursor = await client.query("SELECT * FROM history")
            count, last = 0, 0
            async for event in cursor:
                count, last = count + 1, json.loads(event.data)["seq"]
            await close_client(client)
            return count, last

        started = time.monotonic()
        count, last = run(read_all(), timeout=600)
        elapsed = time.monotonic() - started
        sampling.set()
        sampler.join()
    finally:
        server.stop()
    assert (count, last) == (total, total)
    grown = max(peak) - baseline
    assert grown < 50 * 2**20, (
        f"the server grew by {grown / 2**20:.0f} MiB while {total:,} events took {elapsed:.0f} s"
    )


def test_a_client_that_stops_reading_early_costs_nothing_more(server, reviews_topic):
    async def body():
        client = Ensign(**server.client_kwargs())
        cursor = await client.query("SELECT * FROM reviews")
        first = await cursor.fetchone()
        cursor.close()  # a plain method in pyensign 0.12.1b0: it cancels the stream
        status = await client.status()
        await close_client(client)
        return json.loads(first.data), status

    first, status = run(body())
    assert first == REVIEWS[0]
    assert status.status == 1


def test_queries_wait_for_nothing_while_events_are_published(server, reviews_topic):
    """A query reads the log between commits: a publisher and a reader side by side both finish."""

    async def body():
        publisher, reader = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
        publishing = asyncio.create_task(publish_all(publisher, "busy", [{"n": n} for n in range(500)]))
        counts = []
        while not publishing.done():
            try:
                counts.append(len(await rows(reader, "SELECT * FROM busy")))
            except (QueryNoRows, InvalidQueryError):
                counts.append(0)
        await publishing
        counts.append(len(await rows(reader, "SELECT * FROM busy")))
        await close_client(publisher)
        await close_client(reader)
        return counts

    counts = run(body())
    assert counts == sorted(counts) and counts[-1] == 500
