"""An MLflow tracking server for the tests, as a lab runs one: ``mlflow server`` with a PostgreSQL backend
store and a local artifact destination (artifacts proxied over HTTP), on a free local port; stopped
afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from postgres import free_port, stop


def command(backend_store_uri: str, artifacts: Path, port: int) -> list[str]:
    """The server command (bundle/docs/search.md's scale-out section shows the same)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@contextmanager
def server(backend_store_uri: str, root: Path, timeout: float = 120.0, port: int | None = None) -> Iterator[str]:
    """Start the server (on ``port``, else a free one); yield its tracking URI ``http://127.0.0.1:PORT`` once
    ``/health`` answers."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(root / "server.log", "a")
    process = subprocess.Popen(command(backend_store_uri, root / "artifacts", port), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)
        log.close()
