"""A throwaway Orthanc (the Debian package's ``Orthanc`` binary) for the tests: its own configuration, index
and storage in a temporary folder, HTTP and DICOM on free local ports, stopped and removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from postgres import free_port, stop


def binary() -> str | None:
    """The Orthanc server binary, or None where Orthanc is not installed."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


class Orthanc:
    """A running Orthanc: its AE title, DICOM port and a small client of its REST API."""

    def __init__(self, http_port: int, dicom_port: int, ae_title: str) -> None:
        self.url, self.dicom_port, self.ae_title = f"http://127.0.0.1:{http_port}", dicom_port, ae_title

    def request(self, method: str, path: str, body: bytes | Mapping | list | None = None, timeout: float = 120):
        data = json.dumps(body).encode() if isinstance(body, (Mapping, list)) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content = response.read()
        kind = response.headers.get("Content-Type", "")
        return json.loads(content) if kind.startswith("application/json") else content

    def upload(self, files) -> set[str]:
        """POST each DICOM file to ``/instances``; the Orthanc ids of the studies they made."""
        return {self.request("POST", "/instances", Path(f).read_bytes())["ParentStudy"] for f in files}

    @property
    def destination(self) -> dict:
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.dicom_port}


@contextmanager
def server(
    modalities: Mapping[str, list] | None = None,
    ae_title: str = "ORTHANC",
    ports: tuple[int, int] | None = None,
    folder: Path | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc with ``modalities`` (``{name: [AET, host, port]}``), on ``ports`` (HTTP, DICOM) or free ones;
    stop it (and remove its storage unless ``folder`` is given) on exit."""
    own = folder is None
    root = Path(tempfile.mkdtemp(prefix="orthanc-")) if own else Path(folder)
    http_port, dicom_port = ports or (free_port(), free_port())
    config = {
        "Name": "ctp-stroke-tests",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": dict(modalities or {}),
        "Plugins": [],
        "StableAge": 1,
        "ConcurrentJobs": 2,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "ab")
    # Debian's Orthanc uses the system DCMTK, which since 3.6.2 keeps Nagle's algorithm unless TCP_NODELAY=1: each
    # C-STORE would then wait ~40 ms for a delayed ACK (11 s instead of 0.8 s for 240 images; see the README)
    environment = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen(
        [binary(), str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, env=environment
    )
    orthanc = Orthanc(http_port, dicom_port, ae_title)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                orthanc.request("GET", "/system", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError) as err:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_tail = (root / "orthanc.log").read_text()[-2000:]
                    raise RuntimeError(f"Orthanc did not start: {log_tail}") from err
                time.sleep(0.2)
        yield orthanc
    finally:
        stop(process)
        log.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)
