"""The node's received studies on disk, safe against what a sender controls and against being killed.

Layout under the node's folder: ``studies/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (each instance written
atomically, as received) and ``state/<StudyInstanceUID>.json`` (who sent it, what was processed). Only
StudyInstanceUIDs and SOPInstanceUIDs that are DICOM UIDs (digits and dots, at most 64 characters) become names,
and they pass the same check as datalist ids (:func:`scripts.io.datalist.check_patient_id`): a ``../../x``, an
absolute path or odd bytes in a header are refused, never written.

A study is *due* once nothing arrived for ``quiet_s`` seconds and it holds instances newer than its last
processing (its *mark*, the newest instance's modification time in ns): a study sent again or grown after
processing is processed again, as a whole, from a snapshot of its files (hard links), so later arrivals never mix
into a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from ..io import CTPDataError, save_bytes, save_json
from ..io.datalist import check_patient_id

UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def check_uid(value: object, what: str) -> str:
    """``value`` as a DICOM UID safe as a file name, or ``CTPDataError`` naming ``what``."""
    text = str(value if value is not None else "").rstrip("\0 ")
    if len(text) > 64 or not UID.fullmatch(text):
        raise CTPDataError(f"{what} {text[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters).")
    return check_patient_id(text, what)


class StudyStore:
    """Received instances and each study's state under ``root``; thread-safe (one C-STORE thread per association)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.studies, self.state_dir, self.work = self.root / "studies", self.root / "state", self.root / "work"
        for folder in (self.studies, self.state_dir, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # study -> monotonic time of its last instance (this process)
        self._senders: dict[str, dict] = {}  # study -> the sender its state holds (read once, not per instance)
        for study in self.studies.iterdir():  # after a restart every study with instances gets its quiet time again
            if study.is_dir():
                self._last[study.name] = time.monotonic()

    def save(self, study_uid: object, sop_uid: object, encoded: bytes, calling_ae: str, address: str) -> Path:
        """Write one received instance (its encoded file: preamble, meta and data set) atomically."""
        study = check_uid(study_uid, "StudyInstanceUID")
        path = self.studies / study / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        with self._lock:
            sender = {"calling_ae": calling_ae, "address": address}
            if study not in self._senders:
                self._senders[study] = self.state(study).get("sender")
            if self._senders[study] != sender:
                self._save_state(study, {**self.state(study), "sender": sender})
                self._senders[study] = sender
            save_bytes(path, encoded)
            self._last[study] = time.monotonic()
        return path

    def state(self, study: str) -> dict:
        path = self.state_dir / f"{study}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_state(self, study: str, state: dict) -> None:
        save_json(self.state_dir / f"{study}.json", state)

    def mark(self, study: str) -> int:
        """The newest instance's modification time (ns): what a processing of the study covers."""
        return max((p.stat().st_mtime_ns for p in (self.studies / study).glob("*.dcm")), default=0)

    def due(self, quiet_s: float) -> list[str]:
        """Studies quiet for ``quiet_s`` seconds with instances newer than their last processing, oldest first."""
        now = time.monotonic()
        with self._lock:
            quiet = sorted((t, s) for s, t in self._last.items() if now - t >= quiet_s)
            due = [s for _, s in quiet if self.mark(s) > self.state(s).get("mark", -1)]
            for s in (s for _, s in quiet if s not in due):
                del self._last[s]
        return due

    def snapshot(self, study: str) -> tuple[Path, int]:
        """Hard links of the study's instances (a copy where links fail) in a fresh work folder named by the study,
        and the mark they cover."""
        with self._lock:
            mark = self.mark(study)
            folder = self.work / f"{study}-{mark}" / study
            shutil.rmtree(folder.parent, ignore_errors=True)
            folder.mkdir(parents=True)
            for path in (self.studies / study).glob("*.dcm"):
                try:
                    os.link(path, folder / path.name)
                except OSError:
                    shutil.copy2(path, folder / path.name)
        return folder, mark

    def processed(self, study: str, mark: int, **outcome) -> None:
        """Record that the instances up to ``mark`` were processed, with ``outcome`` (``outbox`` or ``failed``), which
        replaces the outcome of an earlier processing."""
        with self._lock:
            state = {k: v for k, v in self.state(study).items() if k not in ("outbox", "failed")}
            self._save_state(study, {**state, "mark": mark, **outcome})
