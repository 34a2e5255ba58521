"""PostgreSQL access for assets: the embedded server by default, DATABASE_URL otherwise."""
from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from awet_dagster.config import AwetConfig, load_config
from resources.settings import run_config
from awet_dagster.infra.endpoints import resolve_database_url
from awet_dagster.storage.db import connect, make_engine


class DatabaseResource(ConfigurableResource):
    """Resolves the URL lazily so loading definitions never needs a running server."""

    url: str | None = None  # None: config (DATABASE_URL) or the embedded server's endpoint

    _engine: Engine | None = PrivateAttr(default=None)
    _cfg: AwetConfig | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._cfg = run_config(context.run_id)  # the run's one load: its URL and timeouts

    def _config(self) -> AwetConfig:
        if self._cfg is None:  # used outside a run
            self._cfg = load_config()
        return self._cfg

    def resolved_url(self) -> str:
        if self.url:
            return self.url
        return resolve_database_url(self._config())

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.resolved_url())
        return self._engine

    def connect(self):
        """A psycopg connection (autocommit; use `conn.transaction()`), bounded by config timeouts."""
        cfg = self._config()
        return connect(
            self.resolved_url(),
            connect_timeout_s=cfg.database.connect_timeout_s,
            statement_timeout_ms=cfg.database.statement_timeout_ms,
        )
