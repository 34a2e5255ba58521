"""Who may run beside whom in one consumer group, enforced (``live.supervisor`` takes the locks).

A PostgreSQL session-level advisory lock keyed by the service's consumer group, held on a
dedicated connection for as long as the service runs:

- EXCLUSIVE for a service that must run as one instance (risk, execution), and
  for any service reading through this process's shared fetch (``awet live``, all services
  in one process): it reads its partitions WITHOUT joining the group (standalone commits),
  so a group member beside it would be handed the same partitions and both would produce
  everything (measured: every output duplicated, commits refused with UNKNOWN_MEMBER_ID);
- SHARED for a group member (``awet live --service NAME`` of a service that may scale out):
  any number of them, partitions split by the group.

An instance that cannot take its lock refuses to start, naming the holder (the lock
connection's ``application_name``: service, host and pid) and the reason. The lock goes
with the connection: a killed or crashed instance releases it at once (the server ends its
session when the socket closes), so a restart is never blocked by a ghost.
"""
from __future__ import annotations

import logging
import os
import socket
import zlib

log = logging.getLogger("awet.live.single_instance")

_NAMESPACE = 0x41574554  # "AWET": the first key of the two-int advisory lock


class SingleInstanceError(RuntimeError):
    """Another instance of a single-instance service holds its lock."""


def _key(group: str) -> int:
    # A signed 32-bit int (pg_try_advisory_lock(int4, int4)).
    return zlib.crc32(group.encode()) - (1 << 31)


def _holder(conn, group: str):
    """(application_name, backend_start) of a session holding ``group``'s lock, or None."""
    return conn.execute(
        "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s "
        "AND l.objsubid = 2 AND l.granted",
        (_NAMESPACE & 0xFFFFFFFF, _key(group) & 0xFFFFFFFF)).fetchone()


def lock_holder(database_url: str, group: str, connect_timeout_s: int = 10) -> str | None:
    """Who holds consumer group ``group``'s instance lock now (its application name), or None."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True, connect_timeout=connect_timeout_s) as conn:
        row = _holder(conn, group)
    return None if row is None else (row[0] or "another process")


class InstanceLock:
    def __init__(self, database_url: str, service: str, group: str, why: str, *, shared: bool = False,
                 connect_timeout_s: int = 10) -> None:
        self.shared = shared
        self.database_url = database_url
        self.service = service
        self.group = group
        self.why = why
        self.connect_timeout_s = connect_timeout_s
        self._conn = None

    def acquire(self) -> InstanceLock:
        import psycopg

        me = f"awet {self.service}{' (group member)' if self.shared else ''} on {socket.gethostname()} pid {os.getpid()}"
        conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=self.connect_timeout_s,
                               application_name=me[:63])
        try:
            fn = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
            got = conn.execute(f"SELECT {fn}(%s, %s)", (_NAMESPACE, _key(self.group))).fetchone()[0]
            if not got:
                row = _holder(conn, self.group)
                holder = f"{row[0] or 'another process'} since {row[1]:%Y-%m-%d %H:%M:%S %Z}" if row else "another process"
                raise SingleInstanceError(
                    f"{self.service}: not starting: an instance of consumer group {self.group!r} is already "
                    f"running ({holder}). {self.why}"
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def release(self) -> None:
        if self._conn is not None:
            try:
                # Unlock explicitly first: closing the connection ends the session, but the
                # server drops a session's locks when its backend exits, after the client has
                # returned: a successor starting at once could still find the lock held (seen
                # in a clean-clone CI run, seed 2761980137). A dead server needs no unlock.
                fn = "pg_advisory_unlock_shared" if self.shared else "pg_advisory_unlock"
                try:
                    self._conn.execute(f"SELECT {fn}(%s, %s)", (_NAMESPACE, _key(self.group)))
                except Exception:  # noqa: BLE001 - the close below ends the session anyway
                    log.debug("%s: explicit unlock failed; closing the session releases it", self.service)
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
