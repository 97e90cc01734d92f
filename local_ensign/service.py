"""The gRPC service: Ensign's v1beta1 API over the catalog and the event log.

Every RPC of the API is implemented: Publish, Subscribe (with consumer groups, see
``groups``), EnSQL, Explain, CreateTopic, ListTopics, TopicExists, RetrieveTopic,
TopicNames, DeleteTopic (archive and destroy), SetTopicPolicy (deduplication, see
``dedup``), Info and Status.
Every call but Status needs a valid bearer token from the auth endpoint, and
sees only the topics of the project named in that token.

An ack promises that every pyensign subscriber can receive the event, so an event
is checked before it is stored: it must parse as an ``Event`` with data (what the
client needs to deliver it) and fit, once wrapped, in the 4 MiB that pyensign
0.12.1b0 accepts per message (it keeps gRPC's default receive limit). That makes
this server's event limit ``MAX_EVENT_SIZE``, below Ensign's 5,243,000 bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from pyensign.api.v1beta1 import ensign_pb2, event_pb2, groups_pb2, query_pb2, topic_pb2

from . import __version__, dedup, ensql, wire
from .catalog import DELETING, PENDING, READONLY, READY, Catalog, InvalidTopicName, Topic, TopicExistsError
from .committer import Committer, PendingEvent, PendingReply
from .eventlog import EventLog, Record
from .groups import GroupRegistry, Member, group_key
from .ids import ZERO_RLID, parse_ulid, ulid_to_str
from .shared_groups import GroupConflict
from .storage import StoreError
from .subscriptions import SubscriptionRegistry
from .tokens import Claims, InvalidToken, TokenIssuer

log = logging.getLogger("local_ensign.service")

CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024  # gRPC's default, which pyensign 0.12.1b0 keeps
MAX_EVENT_SIZE = CLIENT_RECEIVE_LIMIT - wire.DELIVERY_OVERHEAD
MAX_IN_FLIGHT = 5_000  # events a publish stream may have waiting for their ack
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024  # and their size (one larger event is still taken alone)
QUERY_READ_EVENTS = 500  # a query reads the log this many events at a time,
QUERY_READ_BYTES = 1024 * 1024  # or this many bytes, whichever comes first
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 5_000

Code = grpc.StatusCode
NackCode = ensign_pb2.Nack.Code


class EnsignService:
    """Handlers for ``ensign.v1beta1.Ensign``; register them with ``method_handlers``."""

    def __init__(
        self,
        catalog: Catalog,
        event_log: EventLog,
        committer: Committer,
        registry: SubscriptionRegistry,
        groups: GroupRegistry,
        issuer: TokenIssuer,
        server_id: str,
    ) -> None:
        self.catalog = catalog
        self.event_log = event_log
        self.committer = committer
        self.registry = registry
        self.groups = groups
        self.issuer = issuer
        self.server_id = server_id
        self.started = time.monotonic()
        self._background: set[asyncio.Task] = set()  # destructions under way

    # Authorization ---------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext, *any_of: str) -> Claims:
        """Check the bearer token and that it grants one of ``any_of``; abort otherwise."""
        header = _metadata(context, "authorization")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            await context.abort(Code.UNAUTHENTICATED, "missing credentials")
        try:
            claims = self.issuer.verify_access(token.strip())
        except InvalidToken:
            await context.abort(Code.UNAUTHENTICATED, "invalid credentials")
        if any_of and not claims.permissions.intersection(any_of):
            await context.abort(Code.PERMISSION_DENIED, _denied(*any_of))
        return claims

    # Status --------------------------------------------------------------------------

    async def Status(self, request, context) -> ensign_pb2.ServiceState:
        """HEALTHY, or UNHEALTHY while the event log cannot be written (the log says why)."""
        now = time.time()
        uptime = Duration()
        uptime.FromNanoseconds(int((time.monotonic() - self.started) * 1e9))
        healthy = self.committer.problem is None
        return ensign_pb2.ServiceState(
            status=ensign_pb2.ServiceState.Status.HEALTHY
            if healthy
            else ensign_pb2.ServiceState.Status.UNHEALTHY,
            version=__version__,
            uptime=uptime,
            not_before=_timestamp(now + 60),
            not_after=_timestamp(now + 3600),
        )

    # Topics --------------------------------------------------------------------------

    async def CreateTopic(self, request: topic_pb2.Topic, context) -> topic_pb2.Topic:
        claims = await self._authorize(context, "topics:create")
        if request.project_id:
            try:
                project_id = parse_ulid(request.project_id)
            except ValueError:
                await context.abort(Code.INVALID_ARGUMENT, "could not parse project id")
            if project_id != claims.project_id:
                await context.abort(Code.PERMISSION_DENIED, "not authorized to perform this action")
        if request.HasField("deduplication") and (problem := dedup.problem(request.deduplication)):
            await context.abort(Code.INVALID_ARGUMENT, problem)
        policy = dedup.stored(request.deduplication)
        try:
            # Off the event loop: the write may wait for another process's lock.
            topic = await asyncio.to_thread(
                self.catalog.create_topic, claims.project_id, request.name, policy
            )
        except InvalidTopicName as err:
            await context.abort(Code.INVALID_ARGUMENT, str(err))
        except TopicExistsError:
            await context.abort(Code.ALREADY_EXISTS, f"topic {request.name!r} already exists")
        except StoreError as err:
            log.error("could not create topic %r: %s", request.name, err)
            await context.abort(Code.UNAVAILABLE, f"could not create topic {request.name!r}: {err}")
        log.info("created topic %s (%s)", topic.name, ulid_to_str(topic.id))
        return self._topic_message(topic)

    async def ListTopics(self, request: ensign_pb2.PageInfo, context) -> topic_pb2.TopicsPage:
        claims = await self._authorize(context, "topics:read")
        page, token = await _page(self.catalog.topics(claims.project_id), request, context)
        return topic_pb2.TopicsPage(
            topics=[self._topic_message(topic) for topic in page], next_page_token=token
        )

    async def TopicNames(self, request: ensign_pb2.PageInfo, context) -> topic_pb2.TopicNamesPage:
        claims = await self._authorize(context, "topics:read", "publisher", "subscriber")
        page, token = await _page(self.catalog.topics(claims.project_id), request, context)
        names = [
            topic_pb2.TopicName(topic_id=ulid_to_str(t.id), project_id=ulid_to_str(t.project_id), name=t.name)
            for t in page
        ]
        return topic_pb2.TopicNamesPage(topic_names=names, next_page_token=token)

    async def TopicExists(self, request: topic_pb2.TopicName, context) -> topic_pb2.TopicExistsInfo:
        claims = await self._authorize(context, "topics:read", "publisher", "subscriber")
        if not request.name and not request.topic_id:
            await context.abort(Code.INVALID_ARGUMENT, "topic name or id is required")
        if request.project_id and request.project_id != ulid_to_str(claims.project_id):
            return topic_pb2.TopicExistsInfo(query=_exists_query(request), exists=False)
        topic = None
        if request.name:
            topic = self.catalog.topic_named(claims.project_id, request.name)
        if request.topic_id:
            by_id = self._own_topic(claims, request.topic_id)
            topic = by_id if topic is None or topic == by_id else None
            if request.name and by_id is not None and by_id.name != request.name:
                topic = None
        return topic_pb2.TopicExistsInfo(query=_exists_query(request), exists=topic is not None)

    async def RetrieveTopic(self, request: topic_pb2.Topic, context) -> topic_pb2.Topic:
        claims = await self._authorize(context, "topics:read")
        if not request.id:
            await context.abort(Code.INVALID_ARGUMENT, "topic id is required")
        topic = self._own_topic(claims, request.id)
        if topic is None:
            await context.abort(Code.NOT_FOUND, "topic not found")
        return self._topic_message(topic)

    def _own_topic(self, claims: Claims, topic_id: str | bytes) -> Topic | None:
        """The topic with this id if it belongs to the caller's project, else None."""
        try:
            topic = self.catalog.topic(parse_ulid(topic_id))
        except ValueError:
            return None
        return topic if topic is not None and topic.project_id == claims.project_id else None

    def _topic_message(self, topic: Topic) -> topic_pb2.Topic:
        return topic_pb2.Topic(
            id=topic.id,
            project_id=topic.project_id,
            name=topic.name,
            offset=self.committer.offset(topic.id),
            readonly=topic.state == READONLY,
            status=topic_pb2.TopicState.Value(topic.state),
            deduplication=dedup.load(topic.deduplication),
            created=_timestamp(topic.created),
            modified=_timestamp(topic.modified),
        )

    # Publish -------------------------------------------------------------------------

    async def Publish(self, requests: AsyncIterator[ensign_pb2.PublisherRequest], context):
        # Read the opening message before any refusal, which would otherwise race the client's write.
        first = await _first(requests)
        if first is None:
            return
        claims = await self._authorize(context, "publisher")
        if not first.HasField("open_stream"):
            await context.abort(Code.INVALID_ARGUMENT, "the first message must open the stream")
        topics = self.catalog.topics(claims.project_id)
        if first.open_stream.topics:
            wanted = set(first.open_stream.topics)
            topics = [t for t in topics if t.name in wanted or ulid_to_str(t.id) in wanted]
        if not topics:
            await context.abort(Code.FAILED_PRECONDITION, "no topics available")
        ready = ensign_pb2.StreamReady(
            client_id=first.open_stream.client_id,
            server_id=self.server_id,
            topics={t.name: t.id for t in topics},
        )
        if not await _send(context, ensign_pb2.PublisherReply(ready=ready), "publisher"):
            return
        publisher = _publisher(
            claims.key_id,
            first.open_stream.client_id,
            _peer_address(context.peer()),
            _metadata(context, "user-agent"),
        )
        outbox: asyncio.Queue = asyncio.Queue()
        in_flight = InFlight()
        reader = asyncio.create_task(self._read_events(requests, claims, publisher, outbox, in_flight))
        try:
            while (reply := await outbox.get()) is not None:
                in_flight.settle()
                if not await _send(context, reply, "publisher"):
                    return
        finally:
            reader.cancel()

    async def _read_events(self, requests, claims, publisher, outbox, in_flight: InFlight) -> None:
        """Check each incoming event and hand it to the committer (or nack it in turn)."""
        try:
            async for request in requests:
                if not request.HasField("event"):
                    continue
                await in_flight.admit(len(request.event.event))
                wrapper = request.event
                problem = self._publish_problem(claims, wrapper)
                if problem is None:
                    self.committer.submit(
                        PendingEvent(outbox, wrapper.local_id, wrapper.topic_id, wrapper.event, publisher)
                    )
                else:
                    nack = ensign_pb2.Nack(id=wrapper.local_id, code=problem[0], error=problem[1])
                    self.committer.submit(PendingReply(outbox, ensign_pb2.PublisherReply(nack=nack)))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        self.committer.submit(PendingReply(outbox, None))  # the client half-closed: finish

    def _publish_problem(self, claims: Claims, wrapper: event_pb2.EventWrapper):
        """Why this event cannot be stored, as ``(nack code, message)``, or None."""
        topic = self.catalog.topic(wrapper.topic_id) if len(wrapper.topic_id) == 16 else None
        if topic is None or topic.project_id != claims.project_id:
            return NackCode.TOPIC_UNKNOWN, "topic unknown or not in this project"
        if topic.state == READONLY:
            return (
                NackCode.TOPIC_ARCHIVED,
                f"topic {topic.name!r} is archived: it can be queried, not published to",
            )
        if topic.state == DELETING:
            return NackCode.TOPIC_DELETED, f"topic {topic.name!r} is being destroyed"
        return event_problem(wrapper.event, self.event_log.record_limit)

    # Subscribe -----------------------------------------------------------------------

    async def Subscribe(self, requests: AsyncIterator[ensign_pb2.SubscribeRequest], context):
        # Read the opening message before any refusal, which would otherwise race the client's write.
        first = await _first(requests)
        if first is None:
            return
        claims = await self._authorize(context, "subscriber")
        if not first.HasField("subscription"):
            await context.abort(Code.INVALID_ARGUMENT, "the first message must be a subscription")
        request = first.subscription
        topics = self._match_topics(claims, request.topics)
        if not topics:
            await context.abort(Code.FAILED_PRECONDITION, "no topics available")
        query_text, filter_ = await self._subscription_filter(claims, request.query, topics, context)
        ready = ensign_pb2.SubscribeReply(
            ready=ensign_pb2.StreamReady(
                client_id=request.client_id,
                server_id=self.server_id,
                topics={t.name: t.id for t in topics},
            )
        )
        names = ", ".join(t.name for t in topics)
        if request.HasField("group"):
            member = await self._join_group(claims, request.group, topics, query_text, filter_, context)
            log.info("consumer group %r: a member joined on %s", member.group.name, names)
            await self._serve_member(member, ready, requests, context)
        else:
            subscription = self.registry.register(t.id for t in topics)
            log.info("subscription opened on %s (%d open)", names, len(self.registry))
            await self._serve_live(subscription, filter_, ready, requests, context)

    async def _serve_live(self, subscription, filter_, ready, requests, context) -> None:
        """Send every new event of the subscription's topics (that its query keeps), as it is committed."""
        reader = asyncio.create_task(_drain(requests))
        try:
            await self._send_batches(context, ready, _live_batches(subscription, filter_))
        finally:
            self.registry.unregister(subscription)
            log.info("subscription closed (%d open)", len(self.registry))
            reader.cancel()

    async def _serve_member(self, member: Member, ready, requests, context) -> None:
        """Send a group member its share of the events; its acks and nacks settle them."""
        reader = asyncio.create_task(_read_acks(requests, member))
        try:
            await self._send_batches(context, ready, _member_batches(member))
        finally:
            member.group.leave(member)
            group = member.group
            log.info("consumer group %r: a member left (%d left)", group.name, len(group.members))
            reader.cancel()

    async def _send_batches(self, context, ready, batches: AsyncIterator[list[bytes]]) -> None:
        """Say the stream is ready, then send each batch's wrappers in turn until the client leaves."""
        if not await _send(context, ready, "subscriber"):
            return
        turns = self.registry.turns
        async for batch in batches:
            for wrapper in batch:
                await turns.turn()
                if not await _send(context, wire.event_reply(wrapper), "subscriber"):
                    return

    async def _join_group(self, claims: Claims, request, topics: list[Topic], query_text, filter_, context):
        """Add this stream to its consumer group, or refuse what the group cannot honour."""
        key = group_key(request.id, request.name)
        if not key:
            await context.abort(Code.INVALID_ARGUMENT, "a consumer group needs a name or an id")
        if request.delivery == groups_pb2.DeliverySemantic.EXACTLY_ONCE:
            await context.abort(
                Code.INVALID_ARGUMENT,
                "delivery EXACTLY_ONCE cannot be honoured: the server cannot know whether what you did with"
                " an event happened; use AT_LEAST_ONCE (the default) and skip event ids already processed",
            )
        timeout = request.delivery_timeout.ToTimedelta().total_seconds()
        if timeout < 0:
            await context.abort(Code.INVALID_ARGUMENT, "a group's delivery_timeout cannot be negative")
        group = self.groups.group(claims.project_id, key, request.name or request.id.hex())
        shape = (frozenset(t.id for t in topics), query_text)
        if group.members and group.shape != shape:
            await context.abort(
                Code.FAILED_PRECONDITION,
                f"consumer group {group.name!r} is already reading other topics or another query;"
                " every member of a group subscribes to the same topics with the same query",
            )
        member = group.join(
            shape[0],
            query_text,
            filter_,
            at_most_once=request.delivery == groups_pb2.DeliverySemantic.AT_MOST_ONCE,
            timeout=timeout or self.groups.settings.delivery_timeout,
        )
        try:
            await member.open()
        except GroupConflict as err:  # the group reads something else, as other gateways' members say
            group.leave(member)
            await context.abort(Code.FAILED_PRECONDITION, str(err))
        except StoreError as err:
            group.leave(member)
            await context.abort(Code.UNAVAILABLE, f"cannot join consumer group {group.name!r}: {err}")
        return member

    async def _subscription_filter(
        self, claims: Claims, request: query_pb2.Query, topics: list[Topic], context
    ):
        """A subscription's query (local extension): its text and a filter for its topic's events.

        The query's WHERE and projection apply to the events of the topic it names,
        which must be one of the subscription's; other topics' events pass as they are.
        """
        if not request.query.strip():
            return "", None
        query, target, topic = await self._parse_query(claims, request, context)
        if query.offset or query.limit is not None:
            await context.abort(
                Code.INVALID_ARGUMENT,
                "a subscription's query filters events: OFFSET and LIMIT are for queries",
            )
        if topic.id not in {t.id for t in topics}:
            await context.abort(
                Code.INVALID_ARGUMENT, f"the query reads {topic.name!r}, which this subscription does not"
            )

        def filter_(record: Record) -> bytes | None:
            if record.topic_id != topic.id:
                return record.wrapper
            return _query_result(query, target, record.wrapper)

        return request.query, filter_

    def _match_topics(self, claims: Claims, references) -> list[Topic]:
        """The caller's topics named by each reference (a name or a ULID string)."""
        matched: dict[bytes, Topic] = {}
        for reference in references:
            topic = self.catalog.topic_named(claims.project_id, reference)
            if topic is None:
                topic = self._own_topic(claims, reference)
            if topic is not None:
                matched[topic.id] = topic
        return list(matched.values())

    # EnSQL ---------------------------------------------------------------------------

    async def EnSQL(self, request: query_pb2.Query, context) -> None:
        """Stream the events a query selects, in commit order, read from the log a batch at a time.

        Nothing is collected first, so a query over a large topic costs a batch of
        memory, and a client that stops reading early (``cursor.close()``) costs no
        more than what was sent.
        """
        claims = await self._authorize(context, "subscriber", "topics:read")
        query, target, topic = await self._parse_query(claims, request, context)
        skip, left = query.offset, query.limit
        position = ZERO_RLID
        while left is None or left > 0:
            batch = self.event_log.read(topic.id, position, QUERY_READ_EVENTS, QUERY_READ_BYTES)
            if not batch:
                return
            for record in batch:
                position = record.rlid
                if record.duplicate_of is not None and not request.include_duplicates:
                    continue
                result = _query_result(query, target, record.wrapper)
                if result is None:
                    continue
                if skip:
                    skip -= 1
                    continue
                if not await _send(context, result, "query client"):
                    return
                if left is not None:
                    left -= 1
                    if not left:
                        return

    async def Explain(self, request: query_pb2.Query, context) -> query_pb2.QueryExplanation:
        """Check a query and say what it will scan (in the ``ensql-plan`` trailing metadata).

        ``QueryExplanation`` has no fields in this API version, so the plan travels
        as metadata; pyensign 0.12.1b0's ``explain_query`` raises NotImplementedError
        in the client itself, but ``ensign.client.explain`` reaches this RPC.
        """
        claims = await self._authorize(context, "subscriber")
        query, target, _ = await self._parse_query(claims, request, context)
        plan = ensql.explain(query, target)
        context.set_trailing_metadata((("ensql-plan", plan.encode("ascii", "backslashreplace").decode()),))
        return query_pb2.QueryExplanation()

    async def _parse_query(self, claims: Claims, request: query_pb2.Query, context):
        """The parsed query, its topic target and topic; INVALID_ARGUMENT naming the problem if none."""
        try:
            query = ensql.parse(request.query)
            target = query.resolve(lambda name: self.catalog.topic_named(claims.project_id, name) is not None)
        except ensql.QueryError as err:
            await context.abort(Code.INVALID_ARGUMENT, str(err))
        if target is None:
            await context.abort(
                Code.INVALID_ARGUMENT,
                f"unknown topic in query at position {query.topic_position}: {query.topic_reference!r}",
            )
        return query, target, self.catalog.topic_named(claims.project_id, target.topic)

    # Topic lifecycle and Info ----------------------------------------------------------

    async def DeleteTopic(self, request: topic_pb2.TopicMod, context) -> topic_pb2.TopicStatus:
        """ARCHIVE makes a topic read-only; DESTROY answers DELETING and then removes it entirely."""
        Operation = topic_pb2.TopicMod.Operation
        permission = {Operation.ARCHIVE: "topics:edit", Operation.DESTROY: "topics:destroy"}
        needed = [permission[request.operation]] if request.operation in permission else permission.values()
        claims = await self._authorize(context, *needed)
        if request.operation not in permission:
            await context.abort(Code.INVALID_ARGUMENT, "the operation must be ARCHIVE or DESTROY")
        try:
            parse_ulid(request.id)
        except ValueError:
            await context.abort(Code.INVALID_ARGUMENT, "the topic id is missing or not a ULID")
        topic = self._own_topic(claims, request.id)
        if topic is None:
            await context.abort(Code.NOT_FOUND, "topic not found")
        if not topic.live:
            await context.abort(Code.FAILED_PRECONDITION, "the topic is already being destroyed")
        state = READONLY if request.operation == Operation.ARCHIVE else DELETING
        try:
            await asyncio.to_thread(self.catalog.set_state, topic.id, state)
        except StoreError as err:
            await context.abort(Code.UNAVAILABLE, f"could not change topic {topic.name!r}: {err}")
        if state == DELETING:
            self._in_background(self._destroy(topic))
        log.info("topic %s (%s) is now %s", topic.name, ulid_to_str(topic.id), state)
        return topic_pb2.TopicStatus(id=request.id, state=topic_pb2.TopicState.Value(state))

    async def finish_destructions(self) -> None:
        """Complete the destructions a stopped server left half done (their topics say DELETING)."""
        for topic in self.catalog.in_state(DELETING):
            await self._destroy(topic)

    async def _destroy(self, topic: Topic) -> None:
        """Remove a topic's events and positions, then its name (a stopped server finishes at start-up)."""
        try:
            await self.committer.destroy_topic(topic.id)
            self.groups.forget_topic(topic.id)
            await asyncio.to_thread(self.catalog.remove_topic, topic.id)
        except StoreError as err:
            log.error("could not finish destroying topic %s; the next start will: %s", topic.name, err)
            return
        log.info("topic %s (%s) destroyed", topic.name, ulid_to_str(topic.id))

    async def Info(self, request: ensign_pb2.InfoRequest, context) -> ensign_pb2.ProjectInfo:
        """Counts and sizes of the project's topics (or the ones asked for), computed from the log."""
        claims = await self._authorize(context, "topics:read")
        if "metrics:read" not in claims.permissions:
            await context.abort(Code.PERMISSION_DENIED, _denied("metrics:read"))
        wanted = set()
        for topic_id in request.topics:
            if len(topic_id) != 16:
                await context.abort(Code.INVALID_ARGUMENT, f"a topic id is 16 bytes, got {len(topic_id)}")
            wanted.add(bytes(topic_id))
        topics = [t for t in self.catalog.topics(claims.project_id) if not wanted or t.id in wanted]
        info = ensign_pb2.ProjectInfo(
            project_id=claims.project_id,
            num_topics=len(topics),
            num_readonly_topics=sum(topic.state == READONLY for topic in topics),
        )
        for topic in topics:
            topic_info = await self._topic_info(topic)
            info.events += topic_info.events
            info.duplicates += topic_info.duplicates
            info.data_size_bytes += topic_info.data_size_bytes
            info.topics.append(topic_info)
        return info

    async def _topic_info(self, topic: Topic) -> topic_pb2.TopicInfo:
        """One topic's totals and its breakdown by event type and mimetype, read a batch at a time."""
        info = topic_pb2.TopicInfo(topic_id=topic.id, project_id=topic.project_id)
        by_type: dict[tuple, topic_pb2.EventTypeInfo] = {}
        position = ZERO_RLID
        while batch := self.event_log.read(topic.id, position, QUERY_READ_EVENTS, QUERY_READ_BYTES):
            for record in batch:
                wrapper = event_pb2.EventWrapper.FromString(record.wrapper)
                event = event_pb2.Event.FromString(wrapper.event)
                key = (event.type.SerializeToString(deterministic=True), event.mimetype)
                if key not in by_type:
                    by_type[key] = topic_pb2.EventTypeInfo(type=event.type, mimetype=event.mimetype)
                for totals in (info, by_type[key]):
                    totals.events += 1
                    totals.duplicates += record.duplicate_of is not None
                    totals.data_size_bytes += len(record.wrapper)
                    totals.modified.CopyFrom(wrapper.committed)
            position = batch[-1].rlid
            info.event_offset_id = position
            await asyncio.sleep(0)  # a large topic is read in steps, never holding up the loop
        info.types.extend(by_type.values())
        return info

    # Topic policies --------------------------------------------------------------------

    async def SetTopicPolicy(self, request: topic_pb2.TopicPolicy, context) -> topic_pb2.TopicStatus:
        """Set a topic's deduplication policy: PENDING while its stored events are marked, then READY.

        The checks and their order are Ensign's. Sharding strategies other than the
        default answer UNIMPLEMENTED, as they did there.
        """
        claims = await self._authorize(context, "topics:edit")
        if not request.id:
            await context.abort(Code.INVALID_ARGUMENT, "missing id field")
        wanted = request.deduplication_policy
        no_dedup = not request.HasField("deduplication_policy") or not wanted.strategy
        if no_dedup and not request.sharding_strategy:
            await context.abort(Code.INVALID_ARGUMENT, "no policies defined to set on topic")
        try:
            parse_ulid(request.id)
        except ValueError:
            await context.abort(Code.INVALID_ARGUMENT, "invalid id field")
        topic = self._own_topic(claims, request.id)
        if topic is None or not topic.live:
            await context.abort(Code.NOT_FOUND, "topic not found")
        if topic.state == READONLY:
            await context.abort(Code.FAILED_PRECONDITION, "cannot change policies of an archived topic")
        if topic.state != READY:
            await context.abort(
                Code.FAILED_PRECONDITION, f"cannot change a topic that is in the {topic.state} state"
            )
        if request.sharding_strategy:
            await context.abort(
                Code.UNIMPLEMENTED, "changing the sharding strategy of a topic is currently not supported"
            )
        status = topic_pb2.TopicStatus(id=request.id, state=topic_pb2.TopicState.READY)
        if dedup.stored(wanted) == topic.deduplication:
            return status  # already in place
        if problem := dedup.problem(wanted):
            await context.abort(Code.INVALID_ARGUMENT, problem)
        try:
            await asyncio.to_thread(self.catalog.set_deduplication, topic.id, dedup.stored(wanted), PENDING)
        except StoreError as err:
            await context.abort(Code.UNAVAILABLE, f"could not change topic {topic.name!r}: {err}")
        self._in_background(self._apply_policy(topic.id, dedup.normalize(wanted)))
        log.info("topic %s: deduplication %s", topic.name, dedup.describe(wanted))
        status.state = topic_pb2.TopicState.PENDING
        return status

    async def finish_policies(self) -> None:
        """Apply the policies a stopped server left PENDING (their topics say so)."""
        for topic in self.catalog.in_state(PENDING):
            await self._apply_policy(topic.id, dedup.load(topic.deduplication))

    async def _apply_policy(self, topic_id: bytes, policy) -> None:
        """Mark the topic's stored events by its new policy, then make it READY again.

        Only a topic still PENDING becomes READY: one archived or destroyed meanwhile stays so.
        """
        try:
            await self.committer.apply_policy(topic_id, policy)
            await asyncio.to_thread(self.catalog.set_state, topic_id, READY, PENDING)
        except StoreError as err:
            log.error("could not apply a deduplication policy; the next start will: %s", err)

    def _in_background(self, coroutine) -> None:
        """Run work the reply does not wait for, keeping a reference until it ends."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class InFlight:
    """A publish stream's events read but not yet answered, bounded in number and in bytes.

    Every admitted event gets exactly one reply, in order, so the sizes settle first
    in, first out. While the stream is at its bounds the server reads no more from it,
    and gRPC's flow control holds the client back.
    """

    def __init__(self) -> None:
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self._room = asyncio.Event()

    async def admit(self, size: int) -> None:
        """Wait until an event of ``size`` bytes fits, then count it."""
        while self._sizes and (len(self._sizes) >= MAX_IN_FLIGHT or self._bytes + size > MAX_IN_FLIGHT_BYTES):
            self._room.clear()
            await self._room.wait()
        self._sizes.append(size)
        self._bytes += size

    def settle(self) -> None:
        """The oldest admitted event has been answered."""
        self._bytes -= self._sizes.popleft()
        self._room.set()


def _query_result(query: ensql.Query, target: ensql.TopicTarget, wrapper: bytes) -> bytes | None:
    """What a query sends for one stored wrapper: the stored bytes, a projected copy, or None to skip."""
    if query.selects_all and query.where is None and not target.filters_type:
        return wrapper  # nothing to look at: the stored bytes go out as they are
    stored = event_pb2.EventWrapper.FromString(wrapper)
    selected = query.select(stored.event, target)
    if selected is None:
        return None
    if selected is stored.event:
        return wrapper
    stored.event = selected
    return stored.SerializeToString()


def event_problem(event: bytes, store_limit: int | None = None):
    """Why this ``Event`` cannot be stored or received, as ``(nack code, message)``, or None.

    ``store_limit`` is the largest record the event log takes (for the JetStream store,
    the cluster's ``max_payload`` less room for headers); the stored wrapper adds the
    publisher's details and the ids to the event.
    """
    if store_limit is not None and len(event) > store_limit - wire.DELIVERY_OVERHEAD:
        return (
            NackCode.MAX_EVENT_SIZE_EXCEEDED,
            f"event is {len(event):,} bytes; this server's event log takes events of at most"
            f" {store_limit - wire.DELIVERY_OVERHEAD:,} bytes (a NATS cluster's max_payload, less room"
            " for headers and ids)",
        )
    if len(event) > MAX_EVENT_SIZE:
        return (
            NackCode.MAX_EVENT_SIZE_EXCEEDED,
            f"event is {len(event):,} bytes; the limit here is {MAX_EVENT_SIZE:,} bytes, because pyensign"
            f" subscribers accept messages of at most {CLIENT_RECEIVE_LIMIT:,} bytes (gRPC's default)",
        )
    try:
        data = event_pb2.Event.FromString(event).data
    except DecodeError as err:
        return NackCode.UNKNOWN, f"event is not a valid ensign.v1beta1.Event ({err}); nothing was stored"
    if not data:
        return NackCode.UNKNOWN, "event has no data; nothing was stored"
    return None


def _publisher(publisher_id: str, client_id: str, ipaddr: str, user_agent: str) -> bytes:
    """The encoded Publisher stored with each event of a stream; client-chosen text is cut short."""
    limit = wire.PUBLISHER_FIELD_LIMIT
    return event_pb2.Publisher(
        publisher_id=publisher_id[:limit],
        client_id=client_id[:limit],
        ipaddr=ipaddr[:limit],
        user_agent=user_agent[:limit],
    ).SerializeToString()


def _serialize(message) -> bytes:
    """Serialize a reply, passing pre-encoded bytes through untouched."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def method_handlers(service: EnsignService) -> grpc.GenericRpcHandler:
    """The generic handler that routes ``/ensign.v1beta1.Ensign/*`` to ``service``."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    table = {
        "Publish": (stream, ensign_pb2.PublisherRequest),
        "Subscribe": (stream, ensign_pb2.SubscribeRequest),
        "EnSQL": (grpc.unary_stream_rpc_method_handler, query_pb2.Query),
        "Explain": (unary, query_pb2.Query),
        "ListTopics": (unary, ensign_pb2.PageInfo),
        "CreateTopic": (unary, topic_pb2.Topic),
        "RetrieveTopic": (unary, topic_pb2.Topic),
        "DeleteTopic": (unary, topic_pb2.TopicMod),
        "TopicNames": (unary, ensign_pb2.PageInfo),
        "TopicExists": (unary, topic_pb2.TopicName),
        "SetTopicPolicy": (unary, topic_pb2.TopicPolicy),
        "Info": (unary, ensign_pb2.InfoRequest),
        "Status": (unary, ensign_pb2.HealthCheck),
    }
    handlers = {
        name: kind(
            getattr(service, name), request_deserializer=message.FromString, response_serializer=_serialize
        )
        for name, (kind, message) in table.items()
    }
    return grpc.method_handlers_generic_handler("ensign.v1beta1.Ensign", handlers)


async def _page(topics: list[Topic], request: ensign_pb2.PageInfo, context):
    """Slice one page of topics; the token is the opaque start index of the next page."""
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = 0
    if request.next_page_token:
        try:
            start = int(base64.urlsafe_b64decode(request.next_page_token.encode()).decode())
        except ValueError:
            await context.abort(Code.INVALID_ARGUMENT, "invalid page token")
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(topics) else ""
    return topics[start:end], token


async def _send(context: grpc.aio.ServicerContext, reply, peer: str) -> bool:
    """Write one reply; False, after one INFO line, if the client has gone meanwhile.

    A client that disconnects while a message is being written to it is routine, not
    an error. grpcio 1.59 reports it as an ``ExecuteBatchError`` (a ``grpc.aio.InternalError``),
    which a handler that yields its replies cannot catch: it is raised outside the
    generator and logged as an ERROR with a traceback. So replies are written here.
    """
    try:
        await context.write(reply)
    except grpc.aio.InternalError as err:
        log.info("%s went away while a reply was being sent (%s)", peer, type(err).__name__)
        return False
    return True


async def _first(requests):
    """The first message of a stream, or None if the client left without sending one."""
    try:
        return await requests.__anext__()
    except StopAsyncIteration:
        return None


async def _live_batches(subscription, filter_) -> AsyncIterator[list[bytes]]:
    """A live subscription's events as wrappers to send: duplicates and what its query drops left out."""
    while batch := await subscription.next_batch():
        wrappers = [
            record.wrapper if filter_ is None else filter_(record)
            for record in batch
            if record.duplicate_of is None  # marked by the topic's deduplication policy: never delivered
        ]
        yield [wrapper for wrapper in wrappers if wrapper is not None]


async def _member_batches(member: Member) -> AsyncIterator[list[bytes]]:
    """A group member's share of the events, as its group hands them out."""
    while batch := await member.next_batch():
        yield batch


async def _read_acks(requests, member: Member) -> None:
    """Hand a group member's acks and nacks to its group until the stream ends."""
    try:
        async for request in requests:
            if request.HasField("ack"):
                member.ack(request.ack.id)
            elif request.HasField("nack"):
                member.nack(request.nack.id, request.nack.code)
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass


async def _drain(requests) -> None:
    """Read a subscriber's acks and nacks until the stream ends (nothing is redelivered)."""
    try:
        async for _ in requests:
            pass
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass


def _denied(*any_of: str) -> str:
    """The PERMISSION_DENIED message, naming what the key lacks."""
    return f"not authorized to perform this action: the key needs the {' or '.join(any_of)} permission"


def _exists_query(request: topic_pb2.TopicName) -> str:
    parts = []
    if request.name:
        parts.append(f'name="{request.name}"')
    if request.topic_id:
        parts.append(f'id="{request.topic_id}"')
    return " AND ".join(parts)


def _metadata(context, key: str) -> str:
    return next((v for k, v in context.invocation_metadata() or () if k == key), "")


def _peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` → ``127.0.0.1``."""
    kind, _, rest = peer.partition(":")
    return rest.rpartition(":")[0] if kind in ("ipv4", "ipv6") else peer


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
