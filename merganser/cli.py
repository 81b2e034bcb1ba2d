"""The ``merganser`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from merganser import __version__
from merganser.app import RedactingAccessLogger, create_app
from merganser.config import HELP, ConfigError, Settings, load_settings

log = logging.getLogger("merganser")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merganser", description="merganser mail server")
    parser.add_argument("--version", action="version", version=f"merganser {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", type=Path, help="TOML file with settings (same names as the flags, with _)")
    for name, text in HELP.items():
        serve.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=text)
    return parser


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then close listeners and storage cleanly."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info(
            "HTTP API listening on http://%s:%d (storage %s)",
            settings.http_host,
            settings.http_port,
            settings.storage_url.split("://", 1)[0],
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = vars(_parser().parse_args(argv))
    config_file = arguments.pop("config")
    arguments.pop("command")
    try:
        settings = load_settings(arguments, config_file)
    except ConfigError as error:
        print(f"merganser: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    return 0
