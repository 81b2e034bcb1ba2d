"""Running operations: the limits, the error policy, and fast paths for plain fields.

Strawberry's ``Schema.execute`` wraps every operation in extension hooks and
bookkeeping that cost more than a whole REST request; queries and mutations
over HTTP therefore run through ``MerganserSchema.execute``, which does only
what this server needs: the cached parse and validation of ``limits``, the
limits themselves, execution, and ``errors.present``. Operations over
WebSockets go through Strawberry's own machinery (its protocol handlers need
it) with the ``Guard`` extension applying the same cache, limits and error
policy.

Most of a typical query is objects whose selected fields are plain attributes
(a user's settings and limits, a message's summary). graphql-core resolves
each such field through several calls; ``Planner`` instead makes, once per
query text, a plan that copies those attributes and serializes them directly.
Plans are used at two levels:

* ``FastExecutor`` (graphql-core's executor) completes such objects by plan
  wherever they occur, and takes its own path for everything else;
* a query whose root fields take only scalar arguments and return such
  objects (``user(id:)`` with its settings, say) skips the executor entirely:
  ``CompiledQuery`` calls the root resolvers and applies the plans.

Both only ever take the successful path. Anything a plan cannot complete (a
null in a non-null field), any error of a root resolver, and any variable
that is not plainly of its type sends the work back to graphql-core, which
then reports exactly what it always would. Query resolvers change nothing, so
running one again that way is safe.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
    execute,
    is_leaf_type,
    located_error,
)
from graphql import (
    ExecutionResult as GraphQLExecutionResult,
)
from graphql import (
    OperationType as NodeOperationType,
)
from graphql.pyutils import Undefined
from strawberry.exceptions import MissingQueryError
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext, StreamResult
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from merganser.errors import MerganserError
from merganser.schema.context import GraphQLContext
from merganser.schema.errors import present, present_all
from merganser.schema.limits import Prepared, Preparer, check
from merganser.schema.scalars import LONG_LIMIT
from merganser.schema.sharing import SharedSubscriptions

CACHE_SIZE = 256
INT_LIMIT = 2**31

Complete = Callable[[Any], Any]


class _Fallback(Exception):
    """A plan met a value it cannot complete; graphql-core's path takes the work over."""


# Plans


class Planner:
    """Plans for objects of plain fields within one operation's document.

    A plan exists only where collecting the fields cannot depend on the
    request: selections without directives (@skip, @include) and fragments
    that apply to the object's own type. That is what lets a plan be reused
    by every request with the same query text.
    """

    def __init__(self, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments

    def collect(self, kind: GraphQLObjectType, nodes: Iterable[FieldNode]) -> dict[str, list[FieldNode]] | None:
        """The sub-fields of ``nodes`` by response name, as GraphQL merges them; None where unsure."""
        grouped: dict[str, list[FieldNode]] = {}
        for node in nodes:
            if node.selection_set is None or not self._collect(kind, node.selection_set, grouped, set()):
                return None
        return grouped

    def fields(self, kind: GraphQLObjectType, selections: SelectionSetNode) -> dict[str, list[FieldNode]] | None:
        """The fields of a selection set (an operation's root fields) by response name; None where unsure."""
        grouped: dict[str, list[FieldNode]] = {}
        return grouped if self._collect(kind, selections, grouped, set()) else None

    def _collect(
        self, kind: GraphQLObjectType, selections: SelectionSetNode, grouped: dict[str, list[FieldNode]], seen: set[str]
    ) -> bool:
        for selection in selections.selections:
            if selection.directives:
                return False
            if isinstance(selection, FieldNode):
                name = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(name, []).append(selection)
                continue
            if isinstance(selection, InlineFragmentNode):
                condition, inner = selection.type_condition, selection.selection_set
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments.get(selection.name.value)
                if fragment is None or fragment.directives:
                    return False
                if selection.name.value in seen:
                    continue
                seen.add(selection.name.value)
                condition, inner = fragment.type_condition, fragment.selection_set
            else:
                return False
            if condition is not None and condition.name.value != kind.name:
                return False
            if not self._collect(kind, inner, grouped, seen):
                return False
        return True

    def object(self, kind: GraphQLObjectType, nodes: list[FieldNode]) -> Complete | None:
        """A plan completing a value of ``kind`` selected by ``nodes``; None if a field is not plain."""
        if kind.is_type_of is not None:
            return None
        grouped = self.collect(kind, nodes)
        if grouped is None:
            return None
        steps: list[tuple[str, str | None, Complete]] = []
        for name, fields in grouped.items():
            node = fields[0]
            if node.name.value == "__typename":
                steps.append((name, None, _constant(kind.name)))
                continue
            definition = kind.fields.get(node.name.value)
            if definition is None or node.arguments or not getattr(definition.resolve, "_is_default", False):
                return None
            complete = self.value(definition.type, fields)
            if complete is None:
                return None
            steps.append((name, definition.extensions["strawberry-definition"].python_name, complete))

        def run(source: Any) -> dict[str, Any]:
            return {
                name: complete(source if attribute is None else getattr(source, attribute))
                for name, attribute, complete in steps
            }

        return run

    def value(self, kind: Any, nodes: list[FieldNode]) -> Complete | None:
        """How to complete a value of ``kind`` (wrapped or not) without graphql-core; None if it needs it."""
        nullable = not isinstance(kind, GraphQLNonNull)
        inner = kind if nullable else kind.of_type
        if is_leaf_type(inner):
            return _leaf(inner, nullable)
        if isinstance(inner, GraphQLList):
            item = self.value(inner.of_type, nodes)
            if item is None:
                return None
            complete = _listed(item)
        elif isinstance(inner, GraphQLObjectType):
            plan = self.object(inner, nodes)
            if plan is None:
                return None
            complete = plan
        else:
            return None
        return _nullable(complete) if nullable else _required(complete)


def _constant(value: Any) -> Complete:
    return lambda _: value


# Python types whose values GraphQL's own scalars output unchanged (bounds of integers checked apart).
_AS_IS: dict[str, type] = {"String": str, "ID": str, "Boolean": bool, "Int": int, "Long": int}
_BOUNDS = {"Int": (-INT_LIMIT, INT_LIMIT - 1), "Long": (-LONG_LIMIT, LONG_LIMIT)}


def _leaf(kind: Any, nullable: bool) -> Complete:
    """Serialize a scalar or enum: values already in output form go as they are, others through the type."""
    coerce = kind.coerce_output_value
    as_is = _AS_IS.get(kind.name)
    low, high = _BOUNDS.get(kind.name, (0, -1))

    def complete(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise _Fallback
        if type(value) is as_is and (high < low or low <= value <= high):
            return value
        if isinstance(value, Exception):
            raise _Fallback
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _Fallback
        return coerced

    return complete


def _listed(item: Complete) -> Complete:
    def complete(value: Any) -> list[Any]:
        if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
            raise _Fallback
        return [item(element) for element in value]

    return complete


def _nullable(complete: Complete) -> Complete:
    def nullable(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Exception):
            raise _Fallback
        return complete(value)

    return nullable


def _required(complete: Complete) -> Complete:
    def required(value: Any) -> Any:
        if value is None or isinstance(value, Exception):
            raise _Fallback
        return complete(value)

    return required


def _fragments(document: Any) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


@dataclass(slots=True)
class _Operation:
    """What is worked out once for an operation node: its object plans and its compiled form."""

    operation: OperationDefinitionNode
    planner: Planner
    plans: dict[tuple[Any, ...], Complete | None]
    compiled: CompiledQuery | None = None
    compiled_known: bool = False


class _Operations:
    """Per-operation work, kept for the most recent operations (the parse cache keeps their nodes alive)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[int, _Operation] = OrderedDict()

    def get(self, operation: OperationDefinitionNode, fragments: Callable[[], Mapping[str, Any]]) -> _Operation:
        entry = self._entries.get(id(operation))
        if entry is None or entry.operation is not operation:
            entry = _Operation(operation, Planner(fragments()), {})
            self._entries[id(operation)] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry


OPERATIONS = _Operations()


class FastExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor, completing objects of plain fields through plans."""

    def collect_and_execute_subfields(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        plan = self._plan(return_type, field_details_list)
        if plan is not None:
            try:
                return plan(result)
            except _Fallback:
                pass
        return super().collect_and_execute_subfields(return_type, field_details_list, path, result, position_context)

    def _plan(self, return_type: GraphQLObjectType, field_details_list: Any) -> Complete | None:
        """Plans are told apart by the identity of their field nodes, the same for the same query text."""
        if any(details.defer_usage or details.fragment_variable_values for details in field_details_list):
            return None
        entry = OPERATIONS.get(
            self.operation, lambda: {name: details.definition for name, details in self.fragments.items()}
        )
        key = (return_type.name, *(id(details.node) for details in field_details_list))
        if key not in entry.plans:
            entry.plans[key] = entry.planner.object(return_type, [details.node for details in field_details_list])
        return entry.plans[key]


# Compiled queries

UNSURE = object()
"""A value the compiled path does not take on itself: graphql-core coerces it (or says what is wrong)."""

# Argument values as GraphQL coerces them, for plain values; anything else is UNSURE.
_SCALARS: dict[str, Callable[[Any], Any]] = {
    "ID": lambda value: value if isinstance(value, str) else str(value) if _is_int(value) else UNSURE,
    "String": lambda value: value if isinstance(value, str) else UNSURE,
    "Boolean": lambda value: value if isinstance(value, bool) else UNSURE,
    "Int": lambda value: value if _is_int(value) and -INT_LIMIT <= value < INT_LIMIT else UNSURE,
    "Long": lambda value: value if _is_int(value) and -LONG_LIMIT <= value <= LONG_LIMIT else UNSURE,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _literal(node: ValueNode) -> Any:
    """The Python value of a scalar literal, or UNSURE for anything else."""
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, StringValueNode | BooleanValueNode):
        return node.value
    return UNSURE


@dataclass(frozen=True, slots=True)
class _Argument:
    """Where one argument of a root field comes from, and what it must look like."""

    python_name: str
    check: Callable[[Any], Any]
    nullable: bool
    literal: Any = Undefined
    variable: str | None = None
    variable_default: Any = Undefined

    def value(self, variables: Mapping[str, Any]) -> Any:
        """The value to pass, Undefined to leave the parameter's default, or UNSURE."""
        value = self.literal
        if self.variable is not None:
            value = variables.get(self.variable, self.variable_default)
        if value is Undefined:
            return Undefined if self.nullable or self.variable is None else UNSURE
        if value is None:
            return None if self.nullable else UNSURE
        return self.check(value)


@dataclass(frozen=True, slots=True)
class _Root:
    response_name: str
    resolver: Callable[..., Any]
    arguments: tuple[_Argument, ...]
    complete: Complete
    nodes: tuple[FieldNode, ...]
    nullable: bool


class _RootInfo:
    """What a root query resolver reads of its ``info``: the context."""

    __slots__ = ("context",)

    def __init__(self, context: Any) -> None:
        self.context = context


class CompiledQuery:
    """A query run without graphql-core: its root resolvers called, their results completed by plans."""

    def __init__(self, roots: tuple[_Root, ...]) -> None:
        self.roots = roots

    @classmethod
    def compile(
        cls, schema: strawberry.Schema, operation: OperationDefinitionNode, planner: Planner
    ) -> CompiledQuery | None:
        """The compiled form of a query whose root fields all qualify (see the module docstring), else None."""
        graphql_schema: GraphQLSchema = schema._schema
        root_type = graphql_schema.query_type
        if operation.operation is not NodeOperationType.QUERY or root_type is None:
            return None
        grouped = planner.fields(root_type, operation.selection_set)
        if grouped is None:
            return None
        defaults = {
            definition.variable.name.value: _literal(definition.default_value)
            if definition.default_value is not None
            else Undefined
            for definition in operation.variable_definitions or ()
        }
        roots = []
        for name, nodes in grouped.items():
            root = cls._root(schema, root_type, name, nodes, planner, defaults)
            if root is None:
                return None
            roots.append(root)
        return cls(tuple(roots))

    @staticmethod
    def _root(
        schema: strawberry.Schema,
        root_type: GraphQLObjectType,
        name: str,
        nodes: list[FieldNode],
        planner: Planner,
        defaults: Mapping[str, Any],
    ) -> _Root | None:
        node = nodes[0]
        definition = root_type.fields.get(node.name.value)
        field = definition.extensions.get("strawberry-definition") if definition else None
        if definition is None or field is None or field.base_resolver is None:
            return None
        complete = planner.value(definition.type, nodes)
        if complete is None:
            return None
        python_names = {schema.config.name_converter.from_argument(item): item.python_name for item in field.arguments}
        given = {argument.name.value: argument.value for argument in node.arguments or ()}
        arguments = []
        for graphql_name, argument in definition.args.items():
            kind = argument.type
            nullable = not isinstance(kind, GraphQLNonNull)
            scalar = kind if nullable else kind.of_type
            if not isinstance(scalar, GraphQLScalarType) or scalar.name not in _SCALARS:
                return None
            value = given.get(graphql_name)
            if value is None:
                continue
            check = _SCALARS[scalar.name]
            if isinstance(value, VariableNode):
                variable = value.name.value
                default = defaults.get(variable, Undefined)
                if default is UNSURE:
                    return None
                arguments.append(_Argument(python_names[graphql_name], check, nullable, Undefined, variable, default))
            else:
                literal = _literal(value)
                if literal is UNSURE:
                    return None
                arguments.append(_Argument(python_names[graphql_name], check, nullable, literal))
        nullable = not isinstance(definition.type, GraphQLNonNull)
        return _Root(name, field.base_resolver, tuple(arguments), complete, tuple(nodes), nullable)

    async def run(self, context: Any, variables: Mapping[str, Any] | None) -> ExecutionResult | None:
        """The result, or None where graphql-core must run the query instead.

        The core's refusal of the only root field (an unknown user, say) is
        answered here as graphql-core would answer it, rather than by running
        the resolver a second time there. With several root fields,
        graphql-core runs the others concurrently and may report their errors
        too, so that case still goes back to it.
        """
        values = variables or {}
        info = _RootInfo(context)
        data: dict[str, Any] = {}
        for root in self.roots:
            kwargs = {}
            for argument in root.arguments:
                value = argument.value(values)
                if value is UNSURE:
                    return None
                if value is not Undefined:
                    kwargs[argument.python_name] = value
            try:
                data[root.response_name] = root.complete(await root.resolver(None, info, **kwargs))
            except MerganserError as error:
                if len(self.roots) > 1:
                    return None
                refusal = located_error(error, list(root.nodes), [root.response_name])
                return ExecutionResult(
                    data={root.response_name: None} if root.nullable else None, errors=present_all([refusal])
                )
            except Exception:
                return None
        return ExecutionResult(data=data, errors=None)


# The schema


class MerganserSchema(strawberry.Schema):
    """A Strawberry schema whose HTTP execution is lean (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, execution_context_class=FastExecutor, extensions=[Guard], **kwargs)
        self.preparer = Preparer(self._schema)
        self.compiling = True
        self.shared = SharedSubscriptions()

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Errors are logged where they are presented (``errors.present``): once, and only unexpected ones."""

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Run a query or mutation; the view turns the operation errors raised here into 400 answers."""
        if not query:
            raise MissingQueryError
        prepared = self.preparer.prepare(query)
        if prepared.errors:
            return ExecutionResult(data=None, errors=present_all(prepared.errors))
        plan = prepared.plan(self._schema, operation_name)
        if plan is None:
            raise CannotGetOperationTypeError(operation_name)
        operation_type = OperationType(plan.operation.operation.value)
        if allowed_operation_types is not None and operation_type not in allowed_operation_types:
            raise InvalidOperationTypeError(operation_type)
        errors = check(plan, variable_values)
        if errors:
            return ExecutionResult(data=None, errors=present_all(errors))
        assert prepared.document is not None
        compiled = self._compiled(prepared, plan.operation) if self.compiling else None
        if compiled is not None:
            result = await compiled.run(context_value, variable_values)
            if result is not None:
                return result
        outcome = execute(
            self._schema,
            prepared.document,
            root_value=root_value,
            context_value=context_value,
            variable_values=variable_values,
            operation_name=operation_name,
            executor_class=FastExecutor,
            is_awaitable=optimized_is_awaitable,
            operation_extensions=operation_extensions,
        )
        if optimized_is_awaitable(outcome):
            outcome = await outcome
        return ExecutionResult(data=outcome.data, errors=present_all(outcome.errors))

    async def stream(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
    ) -> StreamResult:
        """Operations over WebSockets (both protocols come here); identical live ones share (see ``sharing``).

        A subscription joins a shared execution only once it passed everything
        an unshared one would (parsing, validation, the limits) with its own
        variables; anything else runs on its own, reporting its errors itself.
        """

        def alone(context: Any) -> StreamResult:
            return super(MerganserSchema, self).stream(
                query,
                variable_values=variable_values,
                context_value=context,
                root_value=root_value,
                operation_name=operation_name,
                operation_extensions=operation_extensions,
                allowed_operation_types=allowed_operation_types,
            )

        allowed = allowed_operation_types is None or OperationType.SUBSCRIPTION in allowed_operation_types
        if not allowed or not self._shareable(
            query, variable_values, context_value, root_value, operation_name, operation_extensions
        ):
            return await alone(context_value)
        assert query is not None
        key = self.shared.key(context_value, query, operation_name, variable_values)
        if key is None:
            return await alone(context_value)
        return self.shared.join(key, context_value, alone)

    def _shareable(
        self,
        query: str | None,
        variables: dict[str, Any] | None,
        context: Any,
        root_value: Any,
        operation_name: str | None,
        operation_extensions: dict[str, Any] | None,
    ) -> bool:
        """A valid "from now on" subscription within the limits, of a plain context and nothing request-specific."""
        if not query or not isinstance(context, GraphQLContext) or root_value is not None or operation_extensions:
            return False
        prepared = self.preparer.prepare(query)
        if prepared.errors or prepared.document is None:
            return False
        plan = prepared.plan(self._schema, operation_name)
        if plan is None or plan.operation.operation is not NodeOperationType.SUBSCRIPTION or check(plan, variables):
            return False
        return not self.shared.replays(query, operation_name, prepared.document, plan.operation, variables)

    def _compiled(self, prepared: Prepared, operation: OperationDefinitionNode) -> CompiledQuery | None:
        entry = OPERATIONS.get(operation, lambda: _fragments(prepared.document))
        if not entry.compiled_known:
            entry.compiled = CompiledQuery.compile(self, operation, entry.planner)
            entry.compiled_known = True
        return entry.compiled


class Guard(SchemaExtension):
    """The same cache, limits and error policy for operations Strawberry runs itself (WebSockets)."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query:
            prepared = self._prepared()
            # A query that does not parse is left to Strawberry, which reports the syntax error itself.
            context.graphql_document = prepared.document
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        prepared = self._prepared()
        errors = list(prepared.errors)
        if not errors:
            plan = prepared.plan(context.schema._schema, context.operation_name)
            errors = check(plan, context.variables) if plan is not None else []
        context.pre_execution_errors = errors
        yield

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if isinstance(result, ExecutionResult | GraphQLExecutionResult) and result.errors:
            result.errors = [present(error) for error in result.errors]

    def on_stream_result(self, result: Any) -> Iterator[None]:
        if isinstance(result, ExecutionResult | GraphQLExecutionResult) and result.errors:
            result.errors = [present(error) for error in result.errors]
        yield

    def _prepared(self) -> Prepared:
        schema = self.execution_context.schema
        assert isinstance(schema, MerganserSchema) and self.execution_context.query
        return schema.preparer.prepare(self.execution_context.query)
