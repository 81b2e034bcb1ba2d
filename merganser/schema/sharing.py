"""Identical live subscriptions share one execution.

A thousand clients watching the same user with the same document would
otherwise each run graphql-core over every event and encode its result: the
fan-out of one delivery then costs the event loop a thousand executions.
Subscriptions whose query text, operation name and variables are equal (on
one server) instead join one *upstream*: a single subscription execution,
whose results are encoded once (``data`` becomes an ``orjson.Fragment``, so
each client's frame only wraps it) and handed to every member.

Each member still passes validation and the limits on its own before it joins,
and keeps a bounded queue of its own: one that falls ``subscriber_buffer``
results behind gets everything queued so far, then the ``SubscriberTooSlow``
error naming the last journal id it got, exactly as an unshared subscription
does, and leaves; the others are not affected. The upstream ends when its last
member leaves, and when it ends (the server shutting down, an error) so does
every member, after the results already queued for it.

A subscription with ``since`` replays the journal from that id, which members
joining later would miss, so it never shares: only "from now on" subscriptions
do, and a member receives the entries committed after it joined.

Waking each member's task for every result, only for it to wrap the data and
send it, was most of what a wide fan-out cost. So a member whose front end
set a ``DirectSink`` (a WebSocket operation does, see ``view``) is handed
plain data results straight away while it is parked with nothing queued: the
frame is built once per distinct sink key (protocol and operation id) and
written as it is. A sink that cannot take it at once (its socket is behind)
says so, and the result takes the queue like any other.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Mapping
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from graphql import ArgumentNode, DocumentNode, GraphQLError, NullValueNode, OperationDefinitionNode, VariableNode
from graphql.language import Visitor, visit
from strawberry.types import ExecutionResult

from merganser.resolvers.hub import SubscriberTooSlow
from merganser.schema.context import GraphQLContext
from merganser.schema.errors import present

CACHE_SIZE = 256
SINCE = "since"

Results = AsyncGenerator[ExecutionResult, None]
Execute = Callable[[GraphQLContext], Awaitable[Results]]


class DirectSink(Protocol):
    """Where one member's plain data results can be written without waking its task."""

    @property
    def key(self) -> Hashable:
        """Sinks with equal keys take byte-identical frames for the same data."""
        ...

    def frame(self, data: orjson.Fragment) -> bytes:
        """The bytes that carry ``data`` to this sink's client."""
        ...

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now if the client can take it; False leaves it to the queue."""
        ...


DIRECT_SINK: ContextVar[DirectSink | None] = ContextVar("merganser_direct_sink", default=None)
"""Set by a front end in the task that iterates a subscription's results."""


@dataclass(frozen=True, slots=True)
class _Replay:
    """Where an operation's ``since`` arguments come from: a literal, or variables (with a non-null default?)."""

    literal: bool
    variables: Mapping[str, bool]

    def replays(self, variables: Mapping[str, Any] | None) -> bool:
        if self.literal:
            return True
        values = variables or {}
        return any(
            values[name] is not None if name in values else defaulted for name, defaulted in self.variables.items()
        )


class _SinceFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.literal = False
        self.variables: set[str] = set()

    def enter_argument(self, node: ArgumentNode, *_: Any) -> None:
        if node.name.value != SINCE:
            return
        if isinstance(node.value, VariableNode):
            self.variables.add(node.value.name.value)
        elif not isinstance(node.value, NullValueNode):
            self.literal = True


def _replay(document: DocumentNode, operation: OperationDefinitionNode) -> _Replay:
    """Every ``since`` in the document counts (other operations' too): erring towards not sharing is safe."""
    finder = _SinceFinder()
    visit(document, finder)
    defaults = {
        definition.variable.name.value: definition.default_value is not None
        and not isinstance(definition.default_value, NullValueNode)
        for definition in operation.variable_definitions or ()
    }
    return _Replay(finder.literal, {name: defaults.get(name, False) for name in finder.variables})


class _Member:
    """One client of an upstream: the results waiting for it, and how far it got."""

    __slots__ = ("dropped", "handed", "overflow", "queue", "sink", "waiter")

    def __init__(self, sink: DirectSink | None) -> None:
        self.sink = sink
        self.queue: deque[tuple[ExecutionResult, int | None]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.dropped = False
        self.handed: int | None = None
        self.overflow: int | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def too_slow(self) -> ExecutionResult:
        """The error that ends a dropped member: resume after the last entry it got (or before the first it missed)."""
        last = self.handed if self.handed is not None else max((self.overflow or 1) - 1, 0)
        error = SubscriberTooSlow(last)
        return ExecutionResult(data=None, errors=[present(GraphQLError(str(error), original_error=error))])


class _Upstream:
    """One execution of a subscription and the members its results go to."""

    def __init__(self, registry: SharedSubscriptions, key: tuple[Any, ...], context: GraphQLContext) -> None:
        self.registry = registry
        self.key = key
        self.context = context
        self.limit = context.core.updates.buffer_limit
        self.members: set[_Member] = set()
        self.task: asyncio.Task[None] | None = None
        self.ended = False

    def start(self, execute: Execute) -> None:
        self.task = asyncio.create_task(self._run(execute))

    async def _run(self, execute: Execute) -> None:
        try:
            async with aclosing(await execute(self.context)) as results:
                async for result in results:
                    self._distribute(_encoded(result), self.context.position)
        finally:
            self._end()

    def _distribute(self, result: ExecutionResult, position: int | None) -> None:
        data = result.data if _plain(result) else None
        frames: dict[Hashable, bytes] = {}
        dropped = []
        for member in self.members:
            sink = member.sink
            if data is not None and sink is not None and member.waiter is not None and not member.queue:
                frame = frames.get(sink.key)
                if frame is None:
                    frame = frames[sink.key] = sink.frame(data)
                if sink.write(frame):
                    if position is not None:
                        member.handed = position
                    continue
            if len(member.queue) >= self.limit:
                member.dropped = True
                member.overflow = position
                dropped.append(member)
            else:
                member.queue.append((result, position))
            member.wake()
        for member in dropped:
            self.leave(member)

    def _end(self) -> None:
        self.ended = True
        self.registry._forget(self)
        for member in self.members:
            member.wake()

    def leave(self, member: _Member) -> None:
        self.members.discard(member)
        if not self.members and not self.ended:
            self.ended = True
            self.registry._forget(self)
            if self.task is not None:
                self.task.cancel()


def _plain(result: ExecutionResult) -> bool:
    """A result that is only data, already encoded: what a direct sink can carry."""
    return (
        type(result) is ExecutionResult
        and not result.errors
        and not result.extensions
        and isinstance(result.data, orjson.Fragment)
    )


def _encoded(result: ExecutionResult) -> ExecutionResult:
    """A plain data result with its data encoded once, for every member's frame to embed as it is."""
    if type(result) is not ExecutionResult or result.errors or result.data is None:
        return result
    return ExecutionResult(data=orjson.Fragment(orjson.dumps(result.data)), errors=None, extensions=result.extensions)


class SharedSubscriptions:
    """The upstreams of one schema, by core and (query text, operation name, variables)."""

    def __init__(self) -> None:
        self._upstreams: dict[tuple[Any, ...], _Upstream] = {}
        self._replays: OrderedDict[tuple[str, str | None], _Replay] = OrderedDict()

    @property
    def member_count(self) -> int:
        return sum(len(upstream.members) for upstream in self._upstreams.values())

    def replays(
        self,
        query: str,
        operation_name: str | None,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any] | None,
    ) -> bool:
        """Whether the operation starts from a journal id (``since``), so that it must run on its own."""
        key = (query, operation_name)
        replay = self._replays.get(key)
        if replay is None:
            replay = self._replays[key] = _replay(document, operation)
            if len(self._replays) > CACHE_SIZE:
                self._replays.popitem(last=False)
        return replay.replays(variables)

    def key(
        self, context: GraphQLContext, query: str, operation_name: str | None, variables: Mapping[str, Any] | None
    ) -> tuple[Any, ...] | None:
        """What members of one upstream have in common; None for variables that are not JSON (never a WebSocket's)."""
        try:
            encoded = orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None
        return (id(context.core), query, operation_name, encoded)

    async def join(self, key: tuple[Any, ...], context: GraphQLContext, execute: Execute) -> Results:
        """One member's results, from its joining on, in order.

        It joins on its first iteration, not before: a generator that is never
        started never runs its ``finally``, and would stay a member for ever.
        """
        upstream = self._upstreams.get(key)
        if upstream is None:
            upstream = self._upstreams[key] = _Upstream(self, key, GraphQLContext(context.core, None, cache=False))
            upstream.start(execute)
        member = _Member(DIRECT_SINK.get())
        upstream.members.add(member)
        try:
            while True:
                if member.queue:
                    result, position = member.queue.popleft()
                    if position is not None:
                        member.handed = position
                    yield result
                elif member.dropped:
                    yield member.too_slow()
                    return
                elif upstream.ended:
                    return
                else:
                    member.waiter = asyncio.get_running_loop().create_future()
                    try:
                        await member.waiter
                    finally:
                        member.waiter = None
        finally:
            upstream.leave(member)

    def _forget(self, upstream: _Upstream) -> None:
        if self._upstreams.get(upstream.key) is upstream:
            del self._upstreams[upstream.key]
