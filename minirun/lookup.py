"""Finding a record by what a user types: its full id, its name, or a prefix of its id.

Shared by the engine's containers and the networks. Compared as plain strings, never as
SQL LIKE patterns: `_` and `%` are name characters (`minirun rm -f d7_` once removed a
container whose id began with d71 because `_` matched any character).
"""

from __future__ import annotations

import sqlite3

from .errors import InvalidArgument, NotFound

HEX_DIGITS = frozenset("0123456789abcdef")
# shorter prefixes are refused rather than guessed: `rm -f a` should not pick a container
MIN_ID_PREFIX = 3


def find_record(db: sqlite3.Connection, table: str, what: str, name_or_id: str) -> dict:
    """The one row of `table` (which has `id` and `name` columns) that `name_or_id` names,
    in docker's order: the full id, else the name, else a unique id prefix of hex digits."""
    rows = _select(db, f"SELECT * FROM {table} WHERE id = ?", name_or_id)
    if not rows:
        rows = _select(db, f"SELECT * FROM {table} WHERE name = ?", name_or_id)
    if not rows and len(name_or_id) >= MIN_ID_PREFIX and set(name_or_id) <= HEX_DIGITS:
        rows = _select(db, f"SELECT * FROM {table} WHERE substr(id, 1, {len(name_or_id)}) = ?",
                       name_or_id)
        if len(rows) > 1:
            raise InvalidArgument(f"{what} id prefix {name_or_id} is ambiguous: it matches "
                                  f"{len(rows)} {what}s")
    if not rows:
        raise NotFound(f"no such {what}: {name_or_id}")
    return rows[0]


def _select(db: sqlite3.Connection, sql: str, value: str) -> list[dict]:
    cur = db.execute(sql, (value,))
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]
