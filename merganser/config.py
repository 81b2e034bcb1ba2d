"""Server settings, merged from defaults, a TOML file, the environment and flags.

Precedence, lowest to highest: built-in defaults, the TOML file given with
``--config``, ``MERGANSER_<NAME>`` environment variables, command-line flags.
Every setting can be given in each of those places under the same name
(``http_port`` in TOML, ``MERGANSER_HTTP_PORT``, ``--http-port``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from merganser.resolvers import hub

GIB = 1024**3
# Incoming mail is parsed in worker processes on the cores the event loop leaves free.
DEFAULT_PARSE_WORKERS = min(4, (os.cpu_count() or 1) - 1)


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("./data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    storage: str = ""
    domain: str = "localhost"
    access_token: str | None = None
    bcrypt_rounds: int = 12
    default_quota: int = GIB
    default_recipients: int = 2000
    default_forwards: int = 2000
    auth_failures_per_user: int = 10
    auth_failures_per_ip: int = 50
    auth_failure_window: int = 300
    max_body_size: int = 1024 * 1024
    lmtp_host: str = "127.0.0.1"
    lmtp_port: int = 2424
    max_message_size: int = 50 * 1024 * 1024
    parse_workers: int = DEFAULT_PARSE_WORKERS
    smtp_relay: str | None = None
    gc_interval: int = 300
    forward_attempts: int = 3
    redis: str | None = None
    heartbeat_interval: int = 15
    subscriber_buffer: int = 1000
    log_level: str = "info"

    @property
    def storage_url(self) -> str:
        """The configured storage URL, or the embedded database in the data dir."""
        return self.storage or f"sqlite:///{self.data_dir / 'merganser.db'}"


class ConfigError(Exception):
    """A setting could not be read or has the wrong type."""


HELP: dict[str, str] = {
    "data_dir": "directory for the embedded database and other state (default ./data)",
    "http_host": "address the HTTP API listens on (default 127.0.0.1)",
    "http_port": "port of the HTTP API (default 8080)",
    "storage": "storage URL: sqlite:///PATH (default <data-dir>/merganser.db) or mongodb://HOST:PORT/DB",
    "domain": "domain of addresses generated for new users (default localhost)",
    "access_token": "if set, every API request must carry it (X-Access-Token header or accessToken query)",
    "bcrypt_rounds": "bcrypt cost factor for stored passwords (default 12)",
    "default_quota": "storage quota in bytes for users created without one (default 1 GiB)",
    "default_recipients": "default daily recipient limit for new users",
    "default_forwards": "default daily forward limit for new users",
    "auth_failures_per_user": "failed authentications allowed per user within the window",
    "auth_failures_per_ip": "failed authentications allowed per IP address within the window",
    "auth_failure_window": "rate-limit window for failed authentications, in seconds",
    "max_body_size": "largest accepted API request body in bytes (default 1 MiB)",
    "lmtp_host": "address the LMTP maildrop listens on (default 127.0.0.1)",
    "lmtp_port": "port of the LMTP maildrop (default 2424; 0 picks a free port, which is logged)",
    "max_message_size": "largest accepted message in bytes, announced with SIZE (default 50 MiB)",
    "parse_workers": "processes that parse incoming mail off the event loop (default: CPUs - 1, at most 4; 0: none)",
    "smtp_relay": "HOST:PORT of the SMTP relay that forwarded copies are sent through",
    "gc_interval": "seconds between runs of the expired-message collector (default 300)",
    "forward_attempts": "attempts to forward or upload a copy before giving up (default 3)",
    "redis": "redis://HOST:PORT/DB to relay live updates between several servers sharing one store",
    "heartbeat_interval": "seconds between keep-alive comments on idle update streams (default 15, at least 1)",
    "subscriber_buffer": (
        f"updates buffered per live subscriber before a slow one is disconnected (default 1000, at least {hub.PAGE})"
    ),
    "log_level": "logging level: debug, info, warning or error",
}


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a TOML or environment value into the setting's type."""
    try:
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is Path:
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r} expects {kind.__name__}, got {value!r}") from None


def _check(settings: Settings) -> None:
    """Refuse values that type-check but would make the server misbehave instead of failing."""
    if settings.heartbeat_interval <= 0:
        # The update streams wait this long for news: 0 would make them spin.
        raise ConfigError(f"setting 'heartbeat_interval' must be at least 1 second, got {settings.heartbeat_interval}")
    if settings.subscriber_buffer < hub.PAGE:
        # One journal read hands a subscriber up to a page of updates at once;
        # a smaller buffer would drop every subscriber on any large change.
        raise ConfigError(
            f"setting 'subscriber_buffer' must be at least {hub.PAGE} (the updates read from the journal at once),"
            f" got {settings.subscriber_buffer}"
        )


def _kinds() -> dict[str, type]:
    kinds: dict[str, type] = {}
    for item in fields(Settings):
        annotation = str(item.type)
        kinds[item.name] = int if annotation == "int" else Path if annotation == "Path" else str
    return kinds


def load_settings(
    flags: Mapping[str, Any], config_file: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Merge every source into one Settings; flags left as None do not override."""
    kinds = _kinds()
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            document = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config file {config_file}: {error}") from None
        unknown = set(document) - set(kinds)
        if unknown:
            raise ConfigError(f"unknown settings in {config_file}: {', '.join(sorted(unknown))}")
        values.update(document)
    for name in kinds:
        env_value = environ.get(f"MERGANSER_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    values.update({name: value for name, value in flags.items() if value is not None})
    settings = Settings(**{name: _coerce(name, kinds[name], value) for name, value in values.items()})
    _check(settings)
    return dataclasses.replace(settings, log_level=settings.log_level.lower())
