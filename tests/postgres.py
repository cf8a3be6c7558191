"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, started on a free local port,
stopped and removed afterwards (also when tests fail). As root, PostgreSQL runs as the machine's ``postgres``
user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None where PostgreSQL is not installed."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if versions:  # Debian's own binaries (the PATH may hold wrappers that want a configured cluster)
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server the tests started, kill it if it does not stop within ``timeout`` s, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_RESTARTS: dict = {}


def restart(url: str, down_s: float = 5.0) -> None:
    """Stop the cluster at ``url`` (``pg_ctl stop -m fast``: every connection is cut), wait ``down_s`` seconds,
    start it again on the same port and data: what an upgrade or a failover does to its clients."""
    _RESTARTS[url](down_s)


@contextmanager
def cluster(databases: tuple[str, ...] = ("optuna", "mlflow")) -> Iterator[str]:
    """Start a cluster with ``databases``; yield its base URL ``postgresql://postgres@127.0.0.1:PORT/``."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="ctp-pg-"))
    data, port = root / "data", free_port()
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(root, "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []

    def run(*command: str) -> None:
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        # an MLflow server and several Optuna workers each hold connection pools: more than the default 100
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
        url = f"postgresql://postgres@127.0.0.1:{port}/"

        def restart(down_s: float) -> None:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")  # every session cut
            time.sleep(down_s)
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")

        _RESTARTS[url] = restart
        try:
            for name in databases:
                run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
            yield url
        finally:
            _RESTARTS.pop(url, None)
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
