"""The DICOM node: a C-STORE SCP that receives CT perfusion studies, labels each once it is complete, and sends
the DICOM SEG, SR and Secondary Capture back to a PACS (:mod:`.storage`, :mod:`.outbox`, :mod:`.service`)."""

from . import outbox, service, storage

__all__ = ["outbox", "service", "storage"]
