"""One user lookup through REST and through GraphQL, on one server, with wrk.

REST answers ``GET /users/{id}``; GraphQL answers ``POST /graphql`` with a
query for the same fields (settings, limits, flags). Both run against the same
``python -m merganser serve`` process, in alternating order round by round,
so outside load falls on both alike. The script prints each one's requests per
second and server CPU per request, and the ratio GraphQL / REST (target: at
least 0.6). It exits non-zero only when something broke: a failed request, or
a GraphQL answer that does not carry what REST's does.

Usage: python bench/graphql_vs_rest.py [--duration S] [--connections N] [--rounds R] [--warmup S]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    PASSWORD,
    Api,
    BenchError,
    Server,
    check_server_alive,
    load_average,
    print_environment,
    running_server,
    server_cpu_seconds,
)
from user_lookup import parse_wrk, wrk_version

QUERY = """query User($id: ID!) {
  user(id: $id) {
    id username name address language forward targetUrl retention enabled2fa activated disabled
    limits { quota { allowed used } recipients { allowed used ttl } forwards { allowed used ttl } }
  }
}"""
# REST shows an unset value as false (the reference's style), GraphQL as null.
UNSET_IN_REST = {"forward", "targetUrl", "retention", "ttl"}
# wrk judges a request by its HTTP status alone, and GraphQL reports a failed query with a 200 whose
# body has "errors": each thread counts such bodies, and done() prints the sum for run_wrk to check.
# (A response() hook makes wrk read every body, which REST's runs skip: client-side work only.)
POST_SCRIPT = """wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  graphql_errors = 0
end

function response(status, headers, body)
  if body ~= nil and string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("graphql_errors")
  end
  io.write(string.format("GraphQL errors: %%d\\n", total))
end
"""
GRAPHQL_ERRORS = re.compile(r"^GraphQL errors: (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Round:
    rate: float
    cpu_per_request: float


@dataclass(frozen=True)
class Target:
    """One way of asking: a URL and, for POST, the wrk script that sends the body."""

    name: str
    url: str
    script: Path | None


def graphql_answer(server: Server, body: bytes) -> dict[str, Any]:
    connection = http.client.HTTPConnection(HOST, server.http_port, timeout=30)
    try:
        connection.request("POST", "/graphql", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    if response.status != 200 or "errors" in document:
        raise BenchError(f"POST /graphql answered {response.status}: {document}")
    return document["data"]["user"]


def same_user(rest: Any, graphql: Any, name: str = "user") -> None:
    """Every field REST shows, GraphQL shows with the same value (null where REST says false)."""
    if isinstance(rest, dict):
        for key, value in rest.items():
            if key != "success":
                same_user(value, graphql.get(key) if isinstance(graphql, dict) else None, key)
        return
    if rest != graphql and not (name in UNSET_IN_REST and rest is False and graphql is None):
        raise BenchError(f"{name}: REST says {rest!r}, GraphQL {graphql!r}")


def run_wrk(target: Target, connections: int, duration: int) -> tuple[int, float]:
    """Requests completed and seconds, from wrk on one thread (the other core is the server's)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s"]
    if target.script is not None:
        command += ["-s", str(target.script)]
    result = subprocess.run([*command, target.url], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    measurement = parse_wrk(result.stdout)
    if target.script is not None:
        counted = GRAPHQL_ERRORS.search(result.stdout)
        if counted is None:
            raise BenchError(f"wrk's script did not report its count of GraphQL errors:\n{result.stdout}")
        if int(counted[1]):
            raise BenchError(f"{counted[1]} {target.name} answers carried errors:\n{result.stdout}")
    return measurement.requests, measurement.seconds


def measure(server: Server, target: Target, args: argparse.Namespace) -> Round:
    before = server_cpu_seconds(server)
    requests, seconds = run_wrk(target, args.connections, args.duration)
    used = server_cpu_seconds(server) - before
    check_server_alive(server)
    return Round(requests / seconds, used / requests)


def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found; install it with: apt-get install -y wrk")
    with (
        tempfile.TemporaryDirectory(prefix="merganser-graphql-bench-") as directory,
        running_server(Path(directory)) as server,
    ):
        api = Api(server.http_port)
        try:
            user_id = str(api.call("POST", "/users", {"username": "benchuser", "password": PASSWORD})["id"])
            rest = api.call("GET", f"/users/{user_id}")
        finally:
            api.close()
        body = json.dumps({"query": QUERY, "variables": {"id": user_id}}).encode()
        same_user(rest, graphql_answer(server, body))
        script = Path(directory) / "graphql.lua"
        script.write_text(POST_SCRIPT % json.dumps(body.decode()))
        base = f"http://{HOST}:{server.http_port}"
        targets = [Target("REST", f"{base}/users/{user_id}", None), Target("GraphQL", f"{base}/graphql", script)]
        print_environment(
            "merganser: the same user lookup through REST (GET /users/{id}) and GraphQL (POST /graphql)",
            None,
            {
                "connections": args.connections,
                "duration": f"{args.duration} s",
                "rounds": args.rounds,
                "warm-up": f"{args.warmup} s",
                "generator": wrk_version("wrk") + " -t1",
            },
        )
        print(f"  response    REST {len(json.dumps(rest))} bytes of JSON; GraphQL the same fields under data.user")
        for target in targets:
            run_wrk(target, args.connections, args.warmup)
        rounds: dict[str, list[Round]] = {target.name: [] for target in targets}
        for number in range(args.rounds):
            for target in targets if number % 2 == 0 else targets[::-1]:
                result = measure(server, target, args)
                rounds[target.name].append(result)
                print(
                    f"  round {number + 1}: {target.name:<8} {result.rate:8.0f} req/s  "
                    f"server CPU {result.cpu_per_request * 1e6:6.1f} us/request",
                    flush=True,
                )
        same_user(rest, graphql_answer(server, body))
        summarize(rounds)
        print(f"  load        {load_average()} after the run")


def summarize(rounds: dict[str, list[Round]]) -> None:
    rate = {name: statistics.median(item.rate for item in results) for name, results in rounds.items()}
    cpu = {name: statistics.median(item.cpu_per_request for item in results) for name, results in rounds.items()}
    for name in rounds:
        print(f"{name:<8} median {rate[name]:8.0f} req/s  server CPU {cpu[name] * 1e6:6.1f} us/request")
    ratios = [graphql.rate / rest.rate for graphql, rest in zip(rounds["GraphQL"], rounds["REST"], strict=True)]
    print(
        f"ratio GraphQL / REST (medians of req/s) {rate['GraphQL'] / rate['REST']:.3f}  (target >= 0.6; "
        f"per round {min(ratios):.3f} to {max(ratios):.3f})"
    )
    print(f"CPU ratio (REST / GraphQL CPU per request, medians) {cpu['REST'] / cpu['GraphQL']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per measured round (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per API; medians are reported (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per API first (default 2)")
    args = parser.parse_args()
    try:
        run(args)
    except BenchError as error:
        print(f"graphql_vs_rest: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
