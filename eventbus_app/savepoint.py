"""A savepoint that costs nothing until the handler inside it touches the database.

Each handler of a batch runs in its own savepoint of the batch transaction, so a handler that
fails rolls back its own effects and nobody else's. Django's ``atomic()`` pays two round
trips per handler for that (``SAVEPOINT`` and ``RELEASE``), which is most of the cost of a
handler that writes nothing to this database: one that sends a mail, calls an API, writes
to a cache. :func:`lazy_savepoint` sends ``SAVEPOINT`` just before the first statement the
handler runs on the connection (through Django's ``execute_wrapper`` hook, which Django
cursors' ``execute()`` and ``executemany()`` pass through), so such handlers cost no round
trip at all, and a handler that writes pays what ``atomic()`` costs. Statements that bypass
the hook (psycopg's ``cursor.copy()``, ``callproc()``, the raw driver connection) are not
covered: a handler that uses them wraps that code in ``transaction.atomic()``.

On the way out it does what an inner ``atomic()`` block does: release on success; on error,
roll back to the savepoint (if one was sent) and drop the on-commit callbacks registered
inside (Django tags them with the open savepoint ids, and ours is among them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, Error, connections
from django.db.transaction import TransactionManagementError

_names = itertools.count(1)


@contextmanager
def lazy_savepoint(using: str) -> Iterator[None]:
    """Like ``transaction.atomic(using)`` nested in an open transaction, with the
    ``SAVEPOINT`` deferred to the block's first query (none: no round trip).

    Unlike ``atomic()``, a block that caught a database error without rolling it back
    (Django then marks the transaction for rollback) does not pass as a success: it is
    rolled back and raises ``TransactionManagementError``.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("lazy_savepoint() needs an enclosing transaction.atomic() block")
    sid = f"eventbus_{next(_names)}"
    state = {"sent": False, "sending": False, "broken": False}

    def send_savepoint_first(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        # Django refuses every query while the transaction is marked for rollback (the
        # handler caught an error Django raised before sending anything): no SAVEPOINT then,
        # the query fails as it would anyway and the block ends as a failure.
        if not state["sent"] and not state["sending"] and not connection.needs_rollback:
            state["sending"] = True  # the SAVEPOINT itself passes through this wrapper
            try:
                connection._savepoint(sid)  # type: ignore[attr-defined]
            except Exception:
                state["broken"] = True  # the transaction's state is unknown now
                raise
            finally:
                state["sending"] = False
            state["sent"] = True
        return execute(sql, params, many, context)

    # Open savepoint ids tag on-commit callbacks: ours lets an error drop the handler's.
    connection.savepoint_ids.append(sid)
    caught_db_error = False
    try:
        with connection.execute_wrapper(send_savepoint_first):
            yield
        caught_db_error = connection.needs_rollback
    except BaseException:
        _close(connection, sid, state, failed=True)
        raise
    _close(connection, sid, state, failed=caught_db_error)
    if caught_db_error:
        raise TransactionManagementError(
            "The handler caught a database error and carried on without rolling it back; "
            "its effects were rolled back. Wrap the statement that may fail in "
            "transaction.atomic() to handle the error inside the handler."
        )


def _close(connection: Any, sid: str, state: dict[str, bool], *, failed: bool) -> None:
    if connection.savepoint_ids and connection.savepoint_ids[-1] == sid:
        connection.savepoint_ids.pop()
    if state["broken"]:
        connection.needs_rollback = True  # the batch transaction must go
    elif connection.closed_in_transaction:
        pass  # the database rolls back by itself; the batch's block deals with it
    elif failed:
        connection.needs_rollback = False
        if state["sent"]:
            try:
                connection.savepoint_rollback(sid)  # also drops the block's callbacks
                connection.savepoint_commit(sid)  # released: it will not be reused
            except Error:
                connection.needs_rollback = True  # the batch transaction must go
        else:
            connection.run_on_commit = [e for e in connection.run_on_commit if sid not in e[0]]
    elif state["sent"]:
        try:
            connection.savepoint_commit(sid)
        except DatabaseError:
            # As atomic() does: the handler swallowed an error the database still holds
            # against the transaction. Roll its block back; the error makes it a failure.
            try:
                connection.savepoint_rollback(sid)
                connection.savepoint_commit(sid)
            except Error:
                connection.needs_rollback = True  # the batch transaction must go
            raise
