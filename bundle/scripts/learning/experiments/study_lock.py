"""A lock shared by every worker of one Optuna study, held by the storage's own engine.

Optuna's ``study.optimize`` checks its budget per process: two workers that both see one trial left both start
it, and two workers opening a new study both create its MLflow parent run. The search takes this lock around
those few milliseconds (opening the study, counting its trials, asking for the next one), so several workers
started with the same command and storage URL run exactly ``n_trials`` trials under one parent run.

- PostgreSQL: a session advisory lock (``pg_advisory_lock``) keyed by the study name;
- MySQL / MariaDB: a named lock (``GET_LOCK``);
- SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the file (workers on one machine);
- other URLs (in-memory SQLite): a lock within this process only.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import sqlalchemy

from .study_storage import connection_lost, with_reconnect

_LOCAL = threading.Lock()


class StudyLock:
    """``acquire`` blocks until no other worker of ``study_name`` holds the lock; ``release`` is idempotent."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        digest = hashlib.sha1(f"optuna-study:{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine: Any = None
        self._connection: Any = None
        self._file: Any = None
        self._held = False

    def _sql(self, statement: str, **params: Any) -> None:
        self._connection.execute(sqlalchemy.text(statement), params)
        self._connection.commit()

    def acquire(self, reconnect: bool = False) -> StudyLock:
        """Block until the lock is held. With ``reconnect`` (every acquisition after the first, from ``with``),
        a database that does not answer is retried as the storage retries it (a restart during a search)."""
        if self.dialect in ("postgresql", "mysql", "mariadb"):
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            if reconnect:
                self._connection = with_reconnect(lambda lock: lock._engine.connect())(self)
            else:
                self._connection = self._engine.connect()
            if self.dialect == "postgresql":
                self._sql("SELECT pg_advisory_lock(:key)", key=self.key)
            else:
                self._sql("SELECT GET_LOCK(:name, -1)", name=f"optuna-{self.key}")
        elif self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            import fcntl

            path = Path(self.url[len("sqlite:///") :] + ".lock")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            _LOCAL.acquire()
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._connection is not None:
            try:
                if self.dialect == "postgresql":
                    self._sql("SELECT pg_advisory_unlock(:key)", key=self.key)
                else:
                    self._sql("SELECT RELEASE_LOCK(:name)", name=f"optuna-{self.key}")
            except Exception as err:
                if not connection_lost(err):
                    raise  # a lost connection (the database restarted) took its session's lock with it
            finally:
                self._connection.close()  # a closed session releases its locks in any case
                self._connection = None
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        else:
            _LOCAL.release()

    def __enter__(self) -> StudyLock:
        return self.acquire(reconnect=True)

    def __exit__(self, *exc: Any) -> None:
        self.release()
