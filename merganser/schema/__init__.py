"""GraphQL types (Strawberry). Only types live here; every resolver calls merganser.resolvers."""
