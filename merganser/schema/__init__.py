"""The GraphQL front end (Strawberry): types, the root operations, and the aiohttp view at /graphql.

Like REST, it holds no rules: every resolver calls ``merganser.resolvers`` and
shapes what comes back. See docs/graphql.md.
"""
