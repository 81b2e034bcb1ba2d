"""The server's periodic jobs (expired mail, the authlog purge) run at start-up, then at their interval."""

from __future__ import annotations

import asyncio

from merganser.app import _every


async def test_a_job_runs_at_start_up_then_at_its_interval_until_stopped():
    stop = asyncio.Event()
    runs: list[float] = []

    async def job() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) == 1:
            raise RuntimeError("a failed run is logged and the job goes on")

    task = asyncio.create_task(_every(0.05, "test job", job, stop))
    await asyncio.sleep(0)
    assert len(runs) == 1, "the first run does not wait for the interval"
    while len(runs) < 3:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    done = len(runs)
    await asyncio.sleep(0.1)
    assert len(runs) == done


async def test_stopping_waits_for_a_run_under_way():
    stop = asyncio.Event()
    finished = asyncio.Event()

    async def job() -> None:
        stop.set()
        await asyncio.sleep(0.05)
        finished.set()

    await asyncio.wait_for(_every(3600, "test job", job, stop), 1)
    assert finished.is_set()
