"""The schema: the root types with merganser's scalars, built once per process."""

from __future__ import annotations

from strawberry.schema.config import StrawberryConfig

from merganser.schema.execution import MerganserSchema
from merganser.schema.mutations import Mutation
from merganser.schema.queries import Query
from merganser.schema.scalars import SCALARS
from merganser.schema.subscriptions import Subscription

schema = MerganserSchema(
    query=Query, mutation=Mutation, subscription=Subscription, config=StrawberryConfig(scalar_map=SCALARS)
)
