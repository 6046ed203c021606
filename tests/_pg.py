"""Store fixtures: a real PostgreSQL server on loopback, and one fresh store per test.

``pg_server`` starts PostgreSQL once per session (``convmem.bench.pgserver.TempPostgres``: the
OS's initdb/pg_ctl, run as the ``postgres`` user when the tests run as root) and stops it at the
end. ``store_spec`` is parametrised over every store kind; a spec opens the same store from any
process (multi-process tests open it again in each child).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from convmem.bench.pgserver import TempPostgres, find_bindir

_schemas = itertools.count()


@dataclass(frozen=True)
class StoreSpec:
    """How to open one store: ``kind`` is ``sqlite`` (``where`` = a file) or ``postgres``."""

    kind: str
    where: str

    def open(self, **kwargs: Any) -> Any:
        if self.kind == "sqlite":
            from convmem.stores import SQLiteStore

            kwargs.setdefault("synchronous", "NORMAL")
            return SQLiteStore(self.where, **kwargs)
        from convmem.stores import PostgresStore

        return PostgresStore(self.where, **kwargs)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TempPostgres]:
    """A PostgreSQL server for the session (fsync off: the tests crash clients, not servers)."""
    missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"PostgresStore needs {', '.join(missing)}: pip install 'convmem[postgres]'")
    if find_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: scripts/bootstrap installs it")
        pytest.skip("PostgreSQL is not installed (no initdb): run scripts/bootstrap")
    with TempPostgres(fsync=False) as server:
        yield server


def _pg_spec(server: TempPostgres) -> StoreSpec:
    """A fresh schema on the session's server: each test sees an empty store."""
    import psycopg

    schema = f"t{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return StoreSpec("postgres", f"{server.conninfo} options=-csearch_path={schema}")


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Any) -> StoreSpec:
    """Every store kind, empty."""
    if request.param == "sqlite":
        return StoreSpec("sqlite", str(tmp_path / "store.db"))
    return _pg_spec(request.getfixturevalue("pg_server"))


@pytest.fixture
def store(store_spec: StoreSpec) -> Iterator[Any]:
    """An open, empty store of each kind (closed after the test)."""
    opened = store_spec.open()
    try:
        yield opened
    finally:
        opened.close()
