"""Command-line behaviour of the bundle workflows: user errors end the run with their message alone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .io import CTPDataError

logger = logging.getLogger(__name__)

USER_ERRORS = (CTPDataError, FileExistsError, FileNotFoundError, ValueError)


def run_or_exit(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; bad input or a refused overwrite exits with status 1 and a one-line message.

    MONAI's config runner would otherwise bury the message under its own ``Failed to evaluate`` traceback.
    """
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
