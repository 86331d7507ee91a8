"""Leaving a process that used the livekit FFI (rtc SDK, livekit-agents) without interpreter finalization.

The FFI's tokio threads can panic while Python tears down ("panic in a function that cannot unwind",
SIGABRT) even after the work is done and its result printed. Every entry point that used the FFI ends
here, once it has cleaned up what it created: there is nothing left to finalize."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_without_finalization(code: int) -> NoReturn:
    sys.stdout.flush()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
