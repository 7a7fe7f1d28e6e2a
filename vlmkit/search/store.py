"""The SQLite side of a search index (``meta.sqlite``): one row per indexed image, keyed by its FAISS id.

SQLite is the source of truth for which items are live: removal sets ``removed = 1`` (a tombstone) before the
vectors leave FAISS, and search keeps only hits that have a live row, so an interrupted write never resurrects an
item. Ids are reserved (and committed) before their vectors are written, so an id is never given twice.
Every change runs in one transaction; values always travel as SQL parameters.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    byte_offset INTEGER,
    byte_size INTEGER,
    key TEXT NOT NULL,
    caption TEXT,
    width INTEGER,
    height INTEGER,
    sha256 TEXT NOT NULL,
    unit TEXT,
    meta TEXT,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
CREATE INDEX IF NOT EXISTS items_sha256 ON items(sha256);
CREATE TABLE IF NOT EXISTS meta_keys (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_SELECT = "SELECT id, path, byte_offset, byte_size, key, caption, width, height, sha256, unit, meta FROM items"
# SQLite's default limit on parameters per statement is 999 in old builds.
_CHUNK = 900


def _row_dict(row: tuple) -> dict:
    item_id, path, offset, size, key, caption, width, height, sha256, unit, meta = row
    return {"id": item_id, "path": path, "offset": offset, "size": size, "key": key, "caption": caption,
            "width": width, "height": height, "sha256": sha256, "unit": unit,
            "meta": json.loads(meta) if meta else {}}


def _chunks(values: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield [int(value) for value in values[start:start + _CHUNK]]


class MetadataStore:
    """Rows of ``meta.sqlite``. Safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no metadata database at {self.path}")
        # isolation_level=None: no implicit transactions; _transaction() opens them explicitly.
        self.connection = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                          check_same_thread=False)
        self.lock = threading.RLock()
        if create:
            self.connection.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        with self.lock:
            return self.connection.execute(sql, list(parameters)).fetchall()

    def next_id(self) -> int:
        rows = self._query("SELECT value FROM counters WHERE name = 'next_id'")
        return int(rows[0][0]) if rows else 0

    def reserve_ids(self, count: int) -> np.ndarray:
        """``count`` new ids [count] int64, committed as used before any vector is written under them."""
        with self._transaction() as connection:
            rows = connection.execute("SELECT value FROM counters WHERE name = 'next_id'").fetchall()
            first = int(rows[0][0]) if rows else 0
            connection.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('next_id', ?)",
                               (first + count,))
        return np.arange(first, first + count, dtype=np.int64)

    def insert(self, ids: np.ndarray, rows: Sequence[dict]) -> None:
        """Insert ``rows`` (dicts with path, key, sha256 and optional offset, size, caption, width, height,
        unit, meta) under ``ids``, in one transaction."""
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} ids for {len(rows)} metadata rows")
        records, keys = [], set()
        for item_id, row in zip(ids, rows):
            meta = row.get("meta") or {}
            keys.update(meta)
            records.append((int(item_id), str(row["path"]), row.get("offset"), row.get("size"),
                            str(row.get("key") or row["path"]), row.get("caption"), row.get("width"),
                            row.get("height"), str(row["sha256"]), row.get("unit"),
                            json.dumps(meta, ensure_ascii=False) if meta else None))
        with self._transaction() as connection:
            connection.executemany("INSERT INTO items (id, path, byte_offset, byte_size, key, caption, width, "
                                   "height, sha256, unit, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            connection.executemany("INSERT OR IGNORE INTO meta_keys (name) VALUES (?)", [(k,) for k in keys])

    def rows(self, ids: Iterable[int]) -> dict[int, dict]:
        """The live rows among ``ids``, by id (removed and unknown ids are absent)."""
        found: dict[int, dict] = {}
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in ids))):
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"{_SELECT} WHERE removed = 0 AND id IN ({marks})", chunk):
                found[row[0]] = _row_dict(row)
        return found

    def item(self, item_id: int) -> dict | None:
        rows = self._query(f"{_SELECT} WHERE removed = 0 AND id = ?", [int(item_id)])
        return _row_dict(rows[0]) if rows else None

    def matching_ids(self, where_sql: str, parameters: Sequence[Any]) -> np.ndarray:
        """Ids [M] int64 of live rows matching a compiled filter (see :func:`vlmkit.search.filters.compile_where`)."""
        clause = f" AND ({where_sql})" if where_sql else ""
        rows = self._query(f"SELECT id FROM items WHERE removed = 0{clause} ORDER BY id", parameters)
        return np.array([row[0] for row in rows], dtype=np.int64)

    def live_ids(self, ids: Iterable[int] = (), paths: Iterable[str] = ()) -> np.ndarray:
        """Live ids [M] int64 among ``ids`` plus those of items stored under any of ``paths``."""
        found = set(self.rows(ids))
        paths = list(dict.fromkeys(str(path) for path in paths))
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._query(
                f"SELECT id FROM items WHERE removed = 0 AND path IN ({marks})", chunk))
        return np.array(sorted(found), dtype=np.int64)

    def tombstone(self, ids: np.ndarray) -> None:
        """Mark ``ids`` removed, in one transaction."""
        with self._transaction() as connection:
            connection.executemany("UPDATE items SET removed = 1 WHERE id = ?", [(int(i),) for i in ids])

    def counts(self) -> tuple[int, int]:
        """(live items, removed items)."""
        rows = self._query("SELECT COALESCE(SUM(removed = 0), 0), COALESCE(SUM(removed), 0) FROM items")
        return int(rows[0][0]), int(rows[0][1])

    def meta_keys(self) -> list[str]:
        return [row[0] for row in self._query("SELECT name FROM meta_keys ORDER BY name")]
