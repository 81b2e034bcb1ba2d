"""What a query may ask for, checked before anything runs: depth, cost and page sizes.

One request can name a great deal of work: users, each with mailboxes, each
with pages of messages, each with its thread. Before execution every operation
is measured against three limits, each refused with its own GraphQL error:

* depth: fields nested more than MAX_DEPTH levels (``QueryTooDeep``);
  introspection is left to graphql-core's rule for its depth;
* page size: a ``first`` below 1 or above MAX_PAGE_SIZE, REST's largest page
  (``PageTooLarge`` above, ``InputValidationError`` below);
* cost: every field costs 1 (reading a message's source costs more), times the
  number of items its list may hold: ``first`` for a connection, LIST_ESTIMATE
  for a plain list. A query costing more than MAX_COST is refused
  (``QueryTooComplex``). Introspection (``__schema``, ``__type``) is costed the
  same way, with the schema's real list sizes (its number of types, the most
  fields of any type…), against a budget of its own: twice what the complete
  standard introspection query (GraphiQL's) costs. graphql-core's own rule
  already refuses introspection nested ``fields { type { fields … } }`` deep.

Parsing, validation and the static part of these checks are done once per
distinct query text and kept in an LRU cache; only the page sizes, which may
come from variables, are looked at per request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DirectiveLocation,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_introspection_query,
    get_named_type,
    get_nullable_type,
    is_abstract_type,
    is_composite_type,
    is_list_type,
    parse,
    specified_rules,
)
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef
from graphql.utilities import get_operation_ast
from strawberry.schema.schema import validate_document

from merganser.resolvers.inputs import MAX_PAGE_SIZE

MAX_DEPTH = 12
MAX_COST = 25_000
LIST_ESTIMATE = 10
# Fields that read and parse a message's source, rather than copy stored values.
FIELD_COSTS: Mapping[tuple[str, str], int] = {
    ("Message", "html"): 20,
    ("Message", "text"): 20,
    ("Message", "attachments"): 20,
}
# Parsing is linear in the tokens; a limit keeps huge documents from costing before they are refused.
MAX_TOKENS = 20_000
CACHE_SIZE = 256


def _limit_error(message: str, code: str, nodes: list[Any] | None = None) -> GraphQLError:
    return GraphQLError(message, nodes=nodes, extensions={"code": code})


@dataclass(frozen=True, slots=True)
class Cost:
    """The cost tree of one field: its own cost, its children's, and how many times they run."""

    weight: int
    children: tuple[Cost, ...]
    introspection: bool
    list_estimate: int = 1
    first: IntValueNode | VariableNode | None = None
    first_default: int = 0
    node: FieldNode | None = None


@dataclass(slots=True)
class OperationPlan:
    """What is known about one operation of a document before any variables are seen."""

    operation: OperationDefinitionNode
    costs: tuple[Cost, ...]
    variable_defaults: dict[str, Any]
    static_errors: list[GraphQLError]
    introspection_budget: int
    fixed: list[GraphQLError] | None = None
    """The outcome of ``check`` when no page size comes from a variable (most queries): worked out once."""


@dataclass(slots=True)
class Prepared:
    """A query text parsed and validated once: its document or its errors, and its operations' plans."""

    document: DocumentNode | None
    errors: list[GraphQLError]
    budgets: Budgets
    plans: dict[str | None, OperationPlan | None] = field(default_factory=dict)

    def plan(self, schema: GraphQLSchema, operation_name: str | None) -> OperationPlan | None:
        """The plan of the named operation (or the only one); None if there is no such operation."""
        if operation_name not in self.plans:
            assert self.document is not None
            operation = get_operation_ast(self.document, operation_name)
            self.plans[operation_name] = (
                None if operation is None else _plan(schema, self.document, operation, self.budgets)
            )
        return self.plans[operation_name]


class Preparer:
    """Parses and validates query texts against one schema, remembering the most recent ones."""

    def __init__(self, schema: GraphQLSchema, size: int = CACHE_SIZE) -> None:
        self._schema = schema
        self._size = size
        self._cache: OrderedDict[str, Prepared] = OrderedDict()
        self._budgets = _budgets(schema)

    def prepare(self, query: str) -> Prepared:
        prepared = self._cache.get(query)
        if prepared is not None:
            self._cache.move_to_end(query)
            return prepared
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError as error:
            prepared = Prepared(None, [error], self._budgets)
        else:
            errors = validate_document(self._schema, document, tuple(specified_rules))
            prepared = Prepared(document, errors, self._budgets)
        self._cache[query] = prepared
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return prepared


def check(plan: OperationPlan, variables: Mapping[str, Any] | None) -> list[GraphQLError]:
    """The limit the operation breaks with these variables, as a list of one error; empty if none."""
    if plan.static_errors:
        return plan.static_errors
    if plan.fixed is not None:
        return plan.fixed
    values = {**plan.variable_defaults, **(variables or {})}
    errors: list[GraphQLError] = []
    data, introspection = _total(plan.costs, values, errors)
    if errors:
        return errors[:1]
    if data > MAX_COST:
        return [
            _limit_error(
                f"This query would cost {data}, more than the {MAX_COST} allowed: ask for fewer items "
                "(first) or fewer nested fields",
                "QueryTooComplex",
            )
        ]
    if introspection > plan.introspection_budget:
        return [
            _limit_error(
                f"This introspection query would cost {introspection}, more than the {plan.introspection_budget} "
                "allowed",
                "QueryTooComplex",
            )
        ]
    return []


def _total(costs: tuple[Cost, ...], variables: Mapping[str, Any], errors: list[GraphQLError]) -> tuple[int, int]:
    """(data cost, introspection cost) of sibling fields."""
    data = introspection = 0
    for cost in costs:
        count = cost.list_estimate
        if cost.node is not None:
            count = _page_size(cost, variables, errors)
        child_data, child_introspection = _total(cost.children, variables, errors)
        if cost.introspection:
            introspection += cost.weight + count * (child_data + child_introspection)
        else:
            data += cost.weight + count * child_data
            introspection += count * child_introspection
    return data, introspection


def _page_size(cost: Cost, variables: Mapping[str, Any], errors: list[GraphQLError]) -> int:
    """The ``first`` a connection field is asked with, checked against the page-size limit."""
    value: Any = cost.first_default
    if isinstance(cost.first, IntValueNode):
        value = int(cost.first.value)
    elif isinstance(cost.first, VariableNode):
        value = variables.get(cost.first.name.value, cost.first_default)
    if not isinstance(value, int) or isinstance(value, bool):
        # A variable of the wrong type: execution refuses it with a clear error of its own.
        return cost.first_default
    if not 1 <= value <= MAX_PAGE_SIZE:
        code = "PageTooLarge" if value > MAX_PAGE_SIZE else "InputValidationError"
        errors.append(_limit_error(f"first must be between 1 and {MAX_PAGE_SIZE} (got {value})", code, [cost.node]))
        return 0
    return value


@dataclass(frozen=True, slots=True)
class Budgets:
    """What introspection lists hold in this schema, and what introspection may cost in all."""

    sizes: Mapping[str, int]
    introspection: int


def _budgets(schema: GraphQLSchema) -> Budgets:
    """Measure the complete standard introspection query; introspection may cost twice that."""
    sizes = Budgets(introspection_sizes(schema), 0)
    query = get_introspection_query(
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
        one_of=True,
    )
    document = parse(query)
    operation = get_operation_ast(document)
    assert operation is not None
    plan = _plan(schema, document, operation, sizes)
    _, cost = _total(plan.costs, {}, [])
    return Budgets(sizes.sizes, 2 * cost)


def introspection_sizes(schema: GraphQLSchema) -> dict[str, int]:
    """The longest list each introspection field can return for this schema."""
    types = list(schema.type_map.values())
    fields = [list(getattr(kind, "fields", {}).values()) for kind in types]
    arguments = [len(item.args) for group in fields for item in group if hasattr(item, "args")]
    arguments += [len(directive.args) for directive in schema.directives]
    return {
        "types": len(types),
        "directives": len(schema.directives),
        "fields": max(map(len, fields)),
        "inputFields": max(map(len, fields)),
        "args": max(arguments),
        "enumValues": max(len(getattr(kind, "values", {})) for kind in types),
        "interfaces": max(len(getattr(kind, "interfaces", ())) for kind in types),
        "possibleTypes": max(len(schema.get_possible_types(kind)) for kind in types if is_abstract_type(kind))
        if any(map(is_abstract_type, types))
        else 1,
        "locations": len(DirectiveLocation),
    }


def _plan(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode, budgets: Budgets
) -> OperationPlan:
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    root = schema.get_root_type(operation.operation)
    defaults = {
        definition.variable.name.value: int(definition.default_value.value)
        for definition in operation.variable_definitions or ()
        if isinstance(definition.default_value, IntValueNode)
    }
    if root is None:
        return OperationPlan(operation, (), defaults, [], budgets.introspection)
    walker = _Walker(schema, fragments, budgets.sizes)
    costs = walker.selections(operation.selection_set, root, 1, introspection=False)
    errors = []
    if walker.depth > MAX_DEPTH:
        message = f"This query nests {walker.depth} levels deep; at most {MAX_DEPTH} are allowed"
        errors.append(_limit_error(message, "QueryTooDeep"))
    plan = OperationPlan(operation, costs, defaults, errors, budgets.introspection)
    if not walker.variable_pages:
        plan.fixed = check(plan, None)
    return plan


class _Walker:
    """Walks an operation's selections with their types, noting depth and building the cost tree.

    Validation has passed, so every field exists on its type and fragments do
    not cycle. Fragments on a type are counted as if they all applied.
    """

    def __init__(
        self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], sizes: Mapping[str, int]
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.sizes = sizes
        self.depth = 0
        self.variable_pages = False

    def selections(
        self, selection_set: SelectionSetNode | None, parent: Any, depth: int, introspection: bool
    ) -> tuple[Cost, ...]:
        if selection_set is None:
            return ()
        costs: list[Cost] = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                costs.extend(self.field(selection, parent, depth, introspection))
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                kind = self.schema.get_type(condition.name.value) if condition else None
                costs.extend(self.selections(selection.selection_set, kind or parent, depth, introspection))
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments[selection.name.value]
                condition = self.schema.get_type(fragment.type_condition.name.value)
                costs.extend(self.selections(fragment.selection_set, condition or parent, depth, introspection))
        return tuple(costs)

    def field(self, node: FieldNode, parent: Any, depth: int, introspection: bool) -> list[Cost]:
        name = node.name.value
        if name == "__typename":
            return []
        definition = self._definition(parent, name)
        if definition is None:
            return []
        introspection = introspection or name.startswith("__")
        if not introspection:
            self.depth = max(self.depth, depth)
        named = get_named_type(definition.type)
        children = ()
        if is_composite_type(named):
            children = self.selections(node.selection_set, named, depth + 1, introspection)
        weight = FIELD_COSTS.get((getattr(parent, "name", ""), name), 1)
        first = definition.args.get("first")
        if first is not None:
            argument = next((item.value for item in node.arguments or () if item.name.value == "first"), None)
            value = argument if isinstance(argument, IntValueNode | VariableNode) else None
            self.variable_pages = self.variable_pages or isinstance(value, VariableNode)
            default = first.default_value if isinstance(first.default_value, int) else 0
            return [Cost(weight, children, introspection, first=value, first_default=default, node=node)]
        in_connection = getattr(parent, "name", "").endswith("Connection")
        if not is_list_type(get_nullable_type(definition.type)) or in_connection:
            return [Cost(weight, children, introspection)]
        estimate = self.sizes.get(name, LIST_ESTIMATE) if introspection else LIST_ESTIMATE
        return [Cost(weight, children, introspection, estimate)]

    def _definition(self, parent: Any, name: str) -> GraphQLField | None:
        if name == "__schema":
            return SchemaMetaFieldDef
        if name == "__type":
            return TypeMetaFieldDef
        if isinstance(parent, GraphQLObjectType) or hasattr(parent, "fields"):
            return parent.fields.get(name)
        return None
