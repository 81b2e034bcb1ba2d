"""Parsing incoming mail in worker processes, so that it uses another core than the event loop.

Parsing is most of what a delivery costs the server's one event loop, and it
is a pure function of the message bytes, so it can run anywhere. Each worker
is ``python -m merganser.resolvers.parse_pool`` talking over a socket pair:
the bytes go there as they are, and a pickled ``Digest`` (only what storing
needs, see ``merganser.resolvers.parsing``) comes back. Requests are answered
in order, so a worker needs no request ids. Workers start on first use, and
end when their socket closes: when the pool is closed, or when the server
dies however it dies.

A pool never fails a delivery. Whenever it cannot answer (it is closed, a
worker would not start, or one died with requests in flight), ``digest``
returns None and the caller parses in its own process as it would without a
pool; a dead worker is replaced on the next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import merganser
from merganser.resolvers.parsing import Digest, digest_message

log = logging.getLogger("merganser.parse_pool")

_LENGTH = struct.Struct("!I")
# After a worker would not start or died, requests are parsed in-process this
# long before another start is tried, so that a broken setup cannot fork a
# process per message.
RETRY_DELAY = 10.0
# The directory merganser is imported from, so that workers import the same code.
_SOURCE_ROOT = str(Path(merganser.__file__).resolve().parent.parent)


def _worker_pythonpath() -> str:
    """PYTHONPATH for a worker: the source root only where the interpreter would not find merganser there anyway.

    PYTHONPATH goes before the standard library, so naming site-packages in
    it (where an installed merganser lives) could let a package shadow a
    standard module in the worker but not in the server.
    """
    on_path = {str(Path(entry).resolve()) for entry in sys.path if entry}
    extra = [] if _SOURCE_ROOT in on_path else [_SOURCE_ROOT]
    return os.pathsep.join(filter(None, [*extra, os.environ.get("PYTHONPATH")]))


class _Worker:
    """One worker process and the requests it has not answered yet, oldest first."""

    def __init__(
        self, process: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.waiting: collections.deque[asyncio.Future[Digest]] = collections.deque()
        self.alive = True
        # Set when the worker went away without being stopped.
        self.failed = False
        self.answers = asyncio.create_task(self._read_answers())

    @classmethod
    async def start(cls) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": _worker_pythonpath()},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            _end(process)
            raise
        return cls(process, reader, writer)

    def send(self, raw: bytes) -> asyncio.Future[Digest]:
        """Queue a request; raises ConnectionError if the worker is already gone.

        A worker can die before its first request (its answer reader has then
        failed everything already), and a request queued after that would
        never be answered.
        """
        if not self.alive:
            raise ConnectionError("parse worker stopped")
        future: asyncio.Future[Digest] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(_LENGTH.pack(len(raw)))
        self.writer.write(raw)
        return future

    async def _read_answers(self) -> None:
        """Hand each answer to the oldest request; when the worker is gone, fail what is left."""
        try:
            while True:
                (size,) = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))
                digest = pickle.loads(await self.reader.readexactly(size))
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(digest)
        except Exception as error:
            if self.alive:
                self.failed = True
                log.warning("parse worker %d stopped answering: %r", self.process.pid, error)
        finally:
            self.stop()
            for future in self.waiting:
                if not future.done():
                    future.set_exception(ConnectionError("parse worker stopped"))
            self.waiting.clear()

    def stop(self) -> None:
        """End the process and close the socket; the answer reader then fails what is still waiting."""
        if not self.alive:
            return
        self.alive = False
        _end(self.process)
        self.writer.close()


def _end(process: subprocess.Popen[bytes]) -> None:
    """Stop a worker at once: what it was parsing is parsed again in-process by whoever asked."""
    process.kill()
    process.wait()


class ParsePool:
    """Up to ``size`` worker processes, each request going to the one with the fewest waiting."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[_Worker] | None = None
        self._resting_until = 0.0
        self._closed = False

    async def digest(self, raw: bytes) -> Digest | None:
        """The message's digest from a worker, or None if the pool cannot make it (the caller parses it)."""
        worker = await self._pick()
        if worker is None:
            return None
        try:
            return await worker.send(raw)
        except ConnectionError:
            return None

    async def _pick(self) -> _Worker | None:
        if self._closed or self.size < 1:
            return None
        if any(worker.failed for worker in self._workers):
            self._resting_until = time.monotonic() + RETRY_DELAY
        self._workers = [worker for worker in self._workers if worker.alive]
        idle = min(self._workers, key=lambda worker: len(worker.waiting), default=None)
        if idle is not None and (not idle.waiting or len(self._workers) >= self.size):
            return idle
        if time.monotonic() < self._resting_until:
            return idle
        # Starting one at a time: requests that arrive meanwhile wait for the same start.
        if self._starting is None:
            self._starting = asyncio.create_task(_Worker.start())
        starting = self._starting
        try:
            worker = await asyncio.shield(starting)
        except Exception:
            log.exception("could not start a parse worker")
            self._resting_until = time.monotonic() + RETRY_DELAY
            return idle
        finally:
            if self._starting is starting:
                self._starting = None
        if self._closed:
            worker.stop()
            return None
        if worker not in self._workers:
            self._workers.append(worker)
        return worker

    def close(self) -> None:
        """Stop every worker; requests still waiting are parsed by their callers."""
        self._closed = True
        for worker in self._workers:
            worker.stop()
        self._workers.clear()
        if self._starting is not None:
            self._starting.add_done_callback(_stop_started)


def _stop_started(starting: asyncio.Task[_Worker]) -> None:
    """A worker that finished starting after its pool closed is stopped at once."""
    if not starting.cancelled() and starting.exception() is None:
        starting.result().stop()


def serve(fd: int) -> None:
    """The worker: read length-prefixed messages from the socket, answer each with its pickled digest."""
    # Ctrl-C in a terminal reaches the whole process group; the server decides when workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock, sock.makefile("rb") as requests:
        while len(header := requests.read(_LENGTH.size)) == _LENGTH.size:
            (size,) = _LENGTH.unpack(header)
            raw = requests.read(size)
            if len(raw) < size:
                return
            answer = pickle.dumps(digest_message(raw), protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(_LENGTH.pack(len(answer)) + answer)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(int(sys.argv[1]))
