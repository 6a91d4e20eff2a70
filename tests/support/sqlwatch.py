"""The SQL a request sends, without what the app's own background threads send meanwhile
(the rollout driver's timer, the fleet repository writer, the cache and claim
listeners): those run whenever they like, and a test of the request path must not
fail because one of them ticked during it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from edgefleet.controller.pgnotify import LISTENER_NAME

BACKGROUND = frozenset({"rollout-driver", "gitops-writer", "edgefleet-claim-waits", LISTENER_NAME})


@contextmanager
def request_statements(engine: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread().name not in BACKGROUND:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
