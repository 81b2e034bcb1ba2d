"""The front ends reach storage only through the core.

A REST handler or a GraphQL resolver that called storage itself would hold a
rule of its own (or skip one), so this is checked twice: statically, over the
source of every front-end module, and at run time, by recording which module
made each storage call while the REST API does a full round of work.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import call, core, create_mailbox, create_user, deliver_ok, mailbox_id, message_ids, simple_message

import merganser
from merganser.storage import base

PACKAGE = Path(merganser.__file__).parent
FRONT_ENDS = ("rest_compat", "schema")


def _modules() -> list[Path]:
    return sorted(path for front_end in FRONT_ENDS for path in (PACKAGE / front_end).rglob("*.py"))


def _violations(path: Path) -> list[str]:
    """What in one module reaches past the core: storage imports other than record types, or ``.storage``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {alias.name}" for alias in node.names if alias.name.startswith("merganser.storage")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("merganser.storage"):
            for alias in node.names:
                record = getattr(base, alias.name, None) if node.module == "merganser.storage.base" else None
                if record is None or not dataclasses.is_dataclass(record):
                    found.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in ("storage", "_storage"):
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_front_end_modules_do_not_touch_storage(path: Path):
    assert _violations(path) == []


def test_the_check_catches_a_handler_that_touches_storage(tmp_path: Path):
    offender = tmp_path / "offender.py"
    offender.write_text(
        "from merganser.storage.base import Storage, User\n"
        "from merganser.storage import sqlite\n"
        "async def handler(request):\n"
        "    return await core_of(request).storage.get_user('x')\n"
    )
    assert _violations(offender) == [
        "from merganser.storage.base import Storage",
        "from merganser.storage import sqlite",
        "line 4: .storage",
    ]


def _record_callers(storage: base.Storage, callers: set[str]) -> None:
    """Wrap each public storage method so that the calling module is noted."""
    for name, _ in inspect.getmembers(type(storage), inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        method: Callable[..., Any] = getattr(storage, name)

        @functools.wraps(method)
        def recording(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            callers.add(sys._getframe(1).f_globals["__name__"])
            return _method(*args, **kwargs)

        setattr(storage, name, recording)


async def test_every_storage_call_of_a_rest_session_comes_from_the_core(api):
    callers: set[str] = set()
    _record_callers(core(api).storage, callers)
    user_id = await create_user(api, address="testuser@example.com")
    await call(api, "GET", f"/users/{user_id}")
    await call(api, "GET", "/users", params={"query": "test"})
    await call(api, "POST", "/authenticate", {"username": "testuser", "password": "secretpass"})
    await call(api, "GET", f"/users/{user_id}/authlog")
    await call(api, "POST", f"/users/{user_id}/asps", {"description": "phone"})
    await call(api, "GET", f"/users/{user_id}/addresses")
    folder = await create_mailbox(api, user_id, "Projects")
    await deliver_ok(api, "testuser@example.com", simple_message("Layers"))
    inbox = await mailbox_id(api, user_id)
    [message] = await message_ids(api, user_id, inbox)
    await call(api, "GET", f"/users/{user_id}/search", params={"query": "Layers"})
    await call(api, "PUT", f"/users/{user_id}/mailboxes/{inbox}/messages/{message}", {"newMailbox": folder})
    await call(api, "POST", f"/users/{user_id}/quota/reset", {})
    await call(api, "DELETE", f"/users/{user_id}/mailboxes/{folder}")
    assert callers, "no storage call was recorded"
    assert {
        caller for caller in callers if not caller.startswith(("merganser.resolvers", "merganser.storage"))
    } == set()
