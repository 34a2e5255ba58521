"""Database access helpers and programmatic Alembic (schema owned by migrations/).

URLs: the infrastructure records libpq URIs (``postgresql://...``, usable by psycopg
directly); SQLAlchemy needs the driver spelled out, so ``sqlalchemy_url`` rewrites
``postgres://`` / ``postgresql://`` to ``postgresql+psycopg://``.

The Alembic script location is resolved from this file, so migrations run the same from
a checkout and from an installed wheel (no alembic.ini needed at run time).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# A DDL statement waiting on a lock held by a forgotten session would otherwise wait forever.
MIGRATION_LOCK_TIMEOUT = "30s"


def sqlalchemy_url(url: str) -> str:
    """``postgresql+psycopg://`` form of a PostgreSQL URL (other drivers are rejected)."""
    if url.startswith("postgresql+psycopg://"):
        return url
    m = re.match(r"^(postgres|postgresql)://", url)
    if m:
        return "postgresql+psycopg://" + url[m.end():]
    if url.startswith("postgresql+"):
        raise ValueError(f"Unsupported PostgreSQL driver in URL (use postgresql+psycopg): {url.split('://')[0]}")
    raise ValueError("Not a PostgreSQL URL (expected postgresql://... or postgresql+psycopg://...)")


def libpq_url(url: str) -> str:
    """``postgresql://`` form (for psycopg.connect)."""
    return re.sub(r"^(postgres|postgresql)(\+psycopg)?://", "postgresql://", url)


def make_engine(
    url: str,
    *,
    connect_timeout_s: int = 10,
    statement_timeout_ms: int | None = None,
    **kwargs: Any,
) -> Engine:
    """SQLAlchemy engine (psycopg 3) whose connects, and optionally statements, are bounded."""
    options = {}
    if statement_timeout_ms:
        options["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(
        sqlalchemy_url(url),
        connect_args={"connect_timeout": int(connect_timeout_s), **options},
        **kwargs,
    )


def engine_from_config(cfg: Any, url: str, **kwargs: Any) -> Engine:
    """make_engine with the timeouts of ``cfg.database``."""
    db = cfg.database
    return make_engine(
        url,
        connect_timeout_s=db.connect_timeout_s,
        statement_timeout_ms=getattr(db, "statement_timeout_ms", None),
        **kwargs,
    )


def alembic_config(url: str | None = None, *, connection: Connection | None = None):
    """Alembic Config pointing at the packaged migrations (no ini file)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % (e.g. in a password) must be doubled.
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _run(url: str, action: str, rev: str, connect_timeout_s: int) -> None:
    from alembic import command

    engine = make_engine(url, connect_timeout_s=connect_timeout_s, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            getattr(command, action)(alembic_config(connection=conn), rev)
    finally:
        engine.dispose()


def upgrade(url: str, rev: str = "head", *, connect_timeout_s: int = 10) -> None:
    """Apply migrations up to ``rev`` (idempotent at head)."""
    _run(url, "upgrade", rev, connect_timeout_s)


def downgrade(url: str, rev: str, *, connect_timeout_s: int = 10) -> None:
    """Revert migrations down to ``rev`` (``"base"`` drops the whole schema)."""
    _run(url, "downgrade", rev, connect_timeout_s)


def current_revision(url: str, *, connect_timeout_s: int = 10) -> str | None:
    """Revision stamped in the database, or None for an unmigrated database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, connect_timeout_s=connect_timeout_s, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def has_timescaledb(conn: Connection) -> bool:
    """True when the server can provide TimescaleDB (installed or installable)."""
    return bool(
        conn.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        ).scalar()
    )


def timescaledb_enabled(conn: Connection) -> bool:
    """True when the extension is created in the current database."""
    return bool(conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).scalar())


def connect(url: str, *, connect_timeout_s: int = 10, statement_timeout_ms: int | None = None):
    """A psycopg 3 connection in autocommit mode: callers open explicit `conn.transaction()`s
    (COPY + upsert + delete of a partition commit together or not at all)."""
    import psycopg

    options = f"-c statement_timeout={int(statement_timeout_ms)}" if statement_timeout_ms else None
    return psycopg.connect(
        libpq_url(url), autocommit=True, connect_timeout=int(connect_timeout_s),
        **({"options": options} if options else {}),
    )
