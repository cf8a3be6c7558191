"""The DICOM node: receive (C-STORE SCP), wait until a study is quiet, label it with the bundle's one processing
function (:func:`scripts.clinical.pipeline.label_studies`), send the SEG, SR and SC back (C-STORE SCU).

Threads: pynetdicom serves each association in its own thread and only writes instances to disk
(:class:`.storage.StudyStore`); one thread delivers results (:class:`.outbox.Outbox`); the calling thread
processes one study at a time. Reception never waits for processing or for a slow or dead destination.

A study that cannot be labelled (not a CT perfusion series, frames missing, a broken file, ...) gets one log line
with its StudyInstanceUID and the reason, recorded in ``state/<StudyInstanceUID>.json`` as ``failed``; nothing
is sent for it, and it is tried again only if more of it arrives.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification

from ..cli import user_error
from ..clinical.pipeline import label_studies
from ..io import CTPDataError
from .outbox import Outbox, no_delay
from .storage import StudyStore

logger = logging.getLogger(__name__)

ACCEPTED_SOP_CLASSES = (CTImageStorage, SecondaryCaptureImageStorage)
"""CT images (the perfusion series) and Secondary Capture (how some vendors export their maps)."""
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, RLELossless,
)  # fmt: skip
"""What the bundle's reader decodes: uncompressed, JPEG Lossless, JPEG-LS lossless and RLE."""
RESULTS = ("seg.dcm", "report_sr.dcm", "report_sc.dcm")


class DicomNode:
    """A C-STORE SCP that labels each complete study and returns its results.

    Args:
        storage_dir: the node's folder (received studies, state, outbox, delivered results).
        ae_title: the node's AE title.
        port: the port it listens on (``host`` its address).
        quiet_s: seconds without a new instance after which a study counts as complete.
        destinations: known AEs, ``{name: {"ae_title", "host", "port"}}``.
        destination: name in ``destinations`` to send every result to; ``None``: back to the AE that sent the
            study (looked up by its AE title among ``destinations``).
        accepted_callers: calling AE titles allowed to send; empty: any.
        threshold: the threshold overlay instead of the network.
        checkpoint: the network's weights (default: the bundle's model).
        inference: any other setting of ``inference.json`` (``nihss`` for a NIHSS model, ``precision``, ...).
        retry_s: first and longest wait between delivery attempts.
    """

    def __init__(
        self,
        storage_dir: str | os.PathLike,
        ae_title: str = "CTPSTROKE",
        port: int = 11112,
        host: str = "0.0.0.0",
        quiet_s: float = 10.0,
        destinations: Mapping[str, Mapping[str, Any]] | None = None,
        destination: str | None = None,
        accepted_callers: Sequence[str] = (),
        threshold: bool = False,
        checkpoint: str | os.PathLike | None = None,
        inference: Mapping[str, Any] | None = None,
        retry_s: Sequence[float] = (2.0, 300.0),
    ) -> None:
        self.destinations = {k: dict(v) for k, v in (destinations or {}).items()}
        if destination is not None and destination not in self.destinations:
            known = ", ".join(self.destinations) or "none"
            raise CTPDataError(f"destination {destination!r} is not one of the destinations ({known}).")
        self.store = StudyStore(storage_dir)
        self.outbox = Outbox(storage_dir, ae_title, retry_s)
        self.ae_title, self.address, self.quiet_s, self.destination = ae_title, (host, int(port)), quiet_s, destination
        self.accepted_callers = [str(a) for a in accepted_callers]
        self.threshold, self.checkpoint, self.inference = bool(threshold), checkpoint, dict(inference or {})
        self.stop = threading.Event()

    def serve(self) -> None:
        """Listen, process and deliver until :attr:`stop` is set (SIGTERM or SIGINT in the main thread set it)."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, no_delay)]
        server = self._ae().start_server(self.address, block=False, evt_handlers=handlers)
        sender = threading.Thread(target=self.outbox.run, args=(self.stop,), name="outbox", daemon=True)
        sender.start()
        previous = self._catch_signals()
        logger.info("DICOM node %s listening on %s:%d, storage %s", self.ae_title, *self.address, self.store.root)
        try:
            while not self.stop.is_set():
                for study in self.store.due(self.quiet_s):
                    if self.stop.is_set():
                        break
                    self.process(study)
                self.stop.wait(0.2)
        finally:
            server.shutdown()
            self.stop.set()
            sender.join(timeout=60)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = self.accepted_callers
        ae.maximum_associations = 16
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def _catch_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: self.stop.set())
        return previous

    def _on_store(self, event) -> int:
        """Write one instance (as received) into the study store; refuse names a UID check does not pass."""
        requestor = event.assoc.requestor
        try:
            dataset = event.dataset
            self.store.save(
                dataset.get("StudyInstanceUID"), event.request.AffectedSOPInstanceUID, event.encoded_dataset(),
                requestor.ae_title, requestor.address,
            )  # fmt: skip
        except CTPDataError as err:
            logger.error("refused an instance from %s: %s", requestor.ae_title, err)
            return 0xC000  # cannot understand
        except OSError as err:
            logger.error("could not store an instance from %s: %s", requestor.ae_title, err)
            return 0xA700  # out of resources
        return 0x0000

    def process(self, study: str) -> None:
        """Label the study's current instances and put its results in the outbox, once per mark."""
        folder, mark = self.store.snapshot(study)
        name = f"{study}-{mark}"
        try:
            if self.outbox.has(name):  # made before a restart cut the state's update
                self.store.processed(study, mark, outbox=name)
                return
            output = Path(tempfile.mkdtemp(prefix="out-", dir=folder.parent))
            count = len(os.listdir(folder))
            logger.info("study %s: %d instance(s) quiet for %.0f s, labelling", study, count, self.quiet_s)
            try:
                done = label_studies(folder, output, self.checkpoint, self.threshold, overwrite=True, **self.inference)
            except (Exception, SystemExit) as err:
                reason = _reason(err)
                logger.error("study %s: no segmentation: %s", study, reason)
                self.store.processed(study, mark, failed=reason)
                return
            if done != [study]:  # stopped by SIGTERM between patients: processed again after a restart
                return
            files = [output / study / f for f in RESULTS if (output / study / f).is_file()]
            destination = self._destination(study)
            self.outbox.put(name, files, destination)
            self.store.processed(study, mark, outbox=name)
            logger.info("study %s: %s in the outbox for %s", study, ", ".join(f.name for f in files),
                        destination["ae_title"] if destination else "no destination")  # fmt: skip
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)

    def _destination(self, study: str) -> dict | None:
        if self.destination is not None:
            return self.destinations[self.destination]
        sender = self.store.state(study).get("sender", {})
        found = next((d for d in self.destinations.values() if d.get("ae_title") == sender.get("calling_ae")), None)
        if found is None:
            logger.error("study %s: results kept in the outbox: the sender %r is not among destinations (%s)",
                         study, sender.get("calling_ae"), ", ".join(self.destinations) or "none")  # fmt: skip
        return found


def _reason(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return str(err.code).removeprefix("error: ")
    cause = user_error(err)
    return str(cause if cause is not None else f"{type(err).__name__}: {err}")


def listen(**settings: Any) -> None:
    """Run a :class:`DicomNode` with ``settings`` until SIGTERM or SIGINT (the ``listening`` workflow)."""
    DicomNode(**settings).serve()
