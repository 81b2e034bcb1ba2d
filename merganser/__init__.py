"""merganser: a mail server whose data is reachable over GraphQL and a WildDuck-compatible REST API."""

__version__ = "0.1.0"
