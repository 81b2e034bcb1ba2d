"""GET /users/{id} throughput: merganser next to a bare aiohttp handler.

The bare handler serves the very bytes merganser returns for the same request,
from memory, on the same HTTP stack and event loop (plain asyncio, one process).
The ratio of the two request rates is therefore the share of aiohttp's raw
speed that merganser keeps after routing, middleware, validation, the SQLite
read, JSON encoding and its access logger. The target is a ratio of at least 0.5; this script only
prints figures and never judges them, so it exits 0 unless something broke
(a server did not start, a request failed or answered other than 200).

Usage: python bench/user_lookup.py [--duration S] [--connections N] [--rounds R]
                                   [--warmup S] [--generator auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp import web

# Run as a script this folder is on sys.path already; imported from elsewhere it may not be.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The shared error class, so scripts that import parse_wrk from here catch what it raises.
from _common import BenchError

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
WRK_INSTALL_HINT = "apt-get install -y wrk"
BUSY_WARNING = 0.2
BENCH_USER = {"username": "benchuser", "password": "bench-password-1"}


@dataclass(frozen=True)
class Server:
    """A server subprocess, where it listens, and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path


@dataclass(frozen=True)
class Measurement:
    """What a load generator saw: completed requests over the time it ran."""

    requests: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Round:
    """One measurement of one server: its request rate and what each request cost it."""

    rate: float
    cpu_per_request: float | None


class LoadGenerator(Protocol):
    description: str

    def run(self, url: str, connections: int, duration: int) -> Measurement: ...


# --- HTTP helpers for setup (plain urllib: no keep-alive needed here) --------------


def request(method: str, url: str, payload: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body, also for 4xx/5xx answers, which urllib raises."""
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"content-type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def expect_ok(method: str, url: str, payload: dict[str, str] | None = None) -> bytes:
    status, body = request(method, url, payload)
    if status != 200:
        raise BenchError(f"{method} {url} answered {status}: {body[:200]!r}")
    return body


# --- server processes ---------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spawn(name: str, command: list[str], port: int, log_path: Path) -> Server:
    """Start a server with its output in a file, so a full pipe can never stall it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return Server(name, process, f"http://{HOST}:{port}", log_path)


def wait_until_answering(server: Server, path: str) -> None:
    """Poll until any HTTP answer comes back; fail early if the process died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{tail(server.log_path)}")
        with contextlib.suppress(OSError):
            request("GET", server.base_url + path)
            return
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not answer within {STARTUP_TIMEOUT:.0f} s:\n{tail(server.log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop(server: Server) -> None:
    """SIGTERM (both servers shut down cleanly on it), SIGKILL if that hangs."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def start_merganser(workdir: Path, stack: contextlib.ExitStack) -> Server:
    """--log-level warning keeps access-log lines out of the measurement.

    --lmtp-port 0 turns the mail drop off: it is not measured, and its fixed
    default port would clash with anything else listening there.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "merganser", "serve",
        "--data-dir", str(workdir / "data"),
        "--http-host", HOST,
        "--http-port", str(port),
        "--lmtp-port", "0",
        "--bcrypt-rounds", "4",
        "--log-level", "warning",
    ]  # fmt: skip
    server = spawn("merganser", command, port, workdir / "merganser.log")
    stack.callback(stop, server)
    wait_until_answering(server, "/users")
    return server


def start_baseline(workdir: Path, body: bytes, stack: contextlib.ExitStack) -> Server:
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(port), str(body_file)]
    server = spawn("baseline", command, port, workdir / "baseline.log")
    stack.callback(stop, server)
    wait_until_answering(server, "/users/ready")
    return server


def serve_baseline(port: int, body_file: Path) -> None:
    """The bare handler: same route shape, same bytes, same content type, no work.

    No access logger either: what merganser spends on its own is the point.
    """
    body = body_file.read_bytes()

    async def get_user(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/users/{user}", get_user)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# --- load generators ------------------------------------------------------------------


class Wrk:
    """wrk on one thread: with two cores the other one is left for the server."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"{wrk_version(path)}: wrk -t1 -c<connections> -d<duration>s --timeout 5s (keep-alive)"

    def run(self, url: str, connections: int, duration: int) -> Measurement:
        command = [self.path, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", url]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
        return parse_wrk(result.stdout)


def wrk_version(path: str) -> str:
    """wrk has no clean version flag; -v prints it first and exits non-zero."""
    result = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).split(" Copyright", 1)[0].strip()


def parse_wrk(output: str) -> Measurement:
    """Requests and seconds from wrk's summary; anything but clean 2xx is an error."""
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith(("Non-2xx", "Socket errors"))]
    if errors:
        raise BenchError(f"wrk reported failed requests: {'; '.join(errors)}\n{output}")
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if summary is None:
        raise BenchError(f"cannot read wrk's summary:\n{output}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[summary[3]]
    return Measurement(int(summary[1]), float(summary[2]) * scale)


class PythonLoad:
    """Fallback when wrk is missing: aiohttp clients in their own process.

    Far slower per request than wrk, so it can become the bottleneck and pull
    both rates (and the ratio) towards its own ceiling.
    """

    def __init__(self, reason: str) -> None:
        self.description = f"Python aiohttp client in its own process, keep-alive ({reason})"

    def run(self, url: str, connections: int, duration: int) -> Measurement:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--python-load", url,
            "--connections", str(connections), "--duration", str(duration),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"Python load generator failed:\n{result.stderr}")
        figures = json.loads(result.stdout)
        return Measurement(figures["requests"], figures["seconds"])


async def python_load(url: str, connections: int, duration: int) -> Measurement:
    """N workers, each with one keep-alive connection, looping until the deadline."""
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=connections)

    async def worker(session: aiohttp.ClientSession) -> int:
        done = 0
        while time.monotonic() < deadline:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise BenchError(f"GET {url} answered {response.status}")
            done += 1
        return done

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        counts = await asyncio.gather(*(worker(session) for _ in range(connections)))
        return Measurement(sum(counts), time.monotonic() - started)


def choose_generator(kind: str) -> LoadGenerator:
    path = shutil.which("wrk")
    if kind == "wrk" and path is None:
        raise BenchError(f"wrk not found; install it with: {WRK_INSTALL_HINT}")
    if kind == "python":
        return PythonLoad("chosen with --generator python")
    if path is None:
        return PythonLoad(f"fallback: wrk not found; install it with: {WRK_INSTALL_HINT}")
    return Wrk(path)


# --- the run ----------------------------------------------------------------------------


def prepare_user(merganser: Server) -> tuple[str, bytes]:
    """One user, and the exact bytes GET /users/{id} returns for it."""
    created = json.loads(expect_ok("POST", merganser.base_url + "/users", BENCH_USER))
    path = f"/users/{created['id']}"
    return path, expect_ok("GET", merganser.base_url + path)


def check_same_answer(baseline: Server, path: str, body: bytes) -> None:
    if expect_ok("GET", baseline.base_url + path) != body:
        raise BenchError("the baseline does not return merganser's bytes")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a whole process (all threads), from /proc; None off Linux.

    CPU per request is far less sensitive than req/s to other load on the
    machine, so it shows where the ratio comes from even on a busy box.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over a short sample, from /proc/stat; None off Linux.

    Sampled before any server is loaded, so it shows what else runs here.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total_before, idle_before = sample()
        time.sleep(seconds)
        total_after, idle_after = sample()
    except OSError:
        return None
    return 1 - (idle_after - idle_before) / max(total_after - total_before, 1)


def measure_once(server: Server, path: str, generator: LoadGenerator, args: argparse.Namespace) -> Round:
    cpu_before = process_cpu_seconds(server.process.pid)
    measurement = generator.run(server.base_url + path, args.connections, args.duration)
    cpu_after = process_cpu_seconds(server.process.pid)
    if cpu_before is None or cpu_after is None:
        return Round(measurement.rate, None)
    return Round(measurement.rate, (cpu_after - cpu_before) / measurement.requests)


def measure(
    servers: list[Server], path: str, generator: LoadGenerator, args: argparse.Namespace
) -> dict[str, list[Round]]:
    """Warm each server up, then alternate which goes first in each round.

    Alternating spreads slow drifts of the machine (other load, thermal) over
    both servers instead of always penalising the one measured second.
    """
    for server in servers:
        generator.run(server.base_url + path, args.connections, args.warmup)
    rounds: dict[str, list[Round]] = {server.name: [] for server in servers}
    for number in range(args.rounds):
        order = servers if number % 2 == 0 else servers[::-1]
        for server in order:
            result = measure_once(server, path, generator, args)
            rounds[server.name].append(result)
            print(f"  round {number + 1}: {server.name:<9} {result.rate:8.0f} req/s  {cpu_text(result)}", flush=True)
    return rounds


def cpu_text(result: Round) -> str:
    if result.cpu_per_request is None:
        return "server CPU n/a"
    return f"server CPU {result.cpu_per_request * 1e6:6.1f} us/request"


def default_loop_name() -> str:
    """The loop class asyncio.run and web.run_app create here: both servers get this one."""
    loop = asyncio.new_event_loop()
    try:
        return type(loop).__name__
    finally:
        loop.close()


def print_header(generator: LoadGenerator, args: argparse.Namespace, body: bytes, busy: float | None) -> None:
    cores = len(os.sched_getaffinity(0))
    busy_text = "n/a" if busy is None else f"{busy:.0%} of all CPUs"
    if busy is not None and busy > BUSY_WARNING:
        busy_text += " (other load: req/s will be noisy, CPU per request less so)"
    print("merganser user lookup benchmark: GET /users/{id}")
    python = f"{platform.python_version()} ({platform.python_implementation()})"
    print(f"  python      {python}, aiohttp {aiohttp.__version__}, event loop {default_loop_name()} in both servers")
    print(f"  machine     {platform.machine()}, {os.cpu_count()} CPUs ({cores} usable), busy before start: {busy_text}")
    print(f"  generator   {generator.description}")
    print(
        f"  parameters  connections={args.connections}, duration={args.duration} s per round, "
        f"rounds={args.rounds}, warm-up={args.warmup} s per server"
    )
    print(f"  response    {len(body)} bytes of JSON from merganser, served from memory by the baseline")
    print(
        f"  note        the load generator runs on the same {cores} CPUs as the server and competes with it;\n"
        "              absolute rates are machine-bound, compare the ratio (and CPU per request)",
        flush=True,
    )


def print_summary(rounds: dict[str, list[Round]], merganser: Server) -> None:
    bare = statistics.median(result.rate for result in rounds["baseline"])
    ours = statistics.median(result.rate for result in rounds["merganser"])
    print(f"baseline  median {bare:8.0f} req/s  {median_cpu_text(rounds['baseline'])}")
    print(f"merganser median {ours:8.0f} req/s  {median_cpu_text(rounds['merganser'])}")
    print(f"ratio (merganser / baseline, medians of req/s) {ours / bare:.3f}  (target >= 0.5)")
    print(f"CPU ratio (baseline / merganser CPU per request, medians) {cpu_ratio(rounds)}  (steadier under other load)")
    log_lines = len(merganser.log_path.read_text(errors="replace").splitlines())
    print(f"merganser log lines during the run: {log_lines} (access log should add none at --log-level warning)")


def median_cpu(results: list[Round]) -> float | None:
    costs = [result.cpu_per_request for result in results if result.cpu_per_request is not None]
    return statistics.median(costs) if costs else None


def cpu_ratio(rounds: dict[str, list[Round]]) -> str:
    bare, ours = median_cpu(rounds["baseline"]), median_cpu(rounds["merganser"])
    return "n/a" if bare is None or not ours else f"{bare / ours:.3f}"


def median_cpu_text(results: list[Round]) -> str:
    cost = median_cpu(results)
    return "server CPU n/a" if cost is None else f"server CPU {cost * 1e6:6.1f} us/request"


def run(args: argparse.Namespace) -> None:
    generator = choose_generator(args.generator)
    with tempfile.TemporaryDirectory(prefix="merganser-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        merganser = start_merganser(workdir, stack)
        path, body = prepare_user(merganser)
        baseline = start_baseline(workdir, body, stack)
        check_same_answer(baseline, path, body)
        print_header(generator, args, body, machine_busy())
        rounds = measure([baseline, merganser], path, generator, args)
        check_same_answer(merganser, path, body)
        print_summary(rounds, merganser)


# --- command line ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per server; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds of unmeasured load per server first")
    parser.add_argument(
        "--generator", choices=("auto", "wrk", "python"), default="auto",
        help="load generator: wrk if installed (auto), or force one",
    )  # fmt: skip
    # Internal modes: the script re-runs itself as the baseline server and the fallback load generator.
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "BODYFILE"), help=argparse.SUPPRESS)
    parser.add_argument("--python-load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup <= 0 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --warmup, --connections and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_server:
        port, body_file = args.baseline_server
        serve_baseline(int(port), Path(body_file))
        return 0
    try:
        if args.python_load:
            measurement = asyncio.run(python_load(args.python_load, args.connections, args.duration))
            print(json.dumps({"requests": measurement.requests, "seconds": measurement.seconds}))
        else:
            run(args)
    except BenchError as error:
        print(f"user_lookup: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
