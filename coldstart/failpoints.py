"""Named crash points for fault tests: ``COLDSTART_CRASH_AT=<name>`` kills the process right there.

The trainer's round has steps whose order makes it crash-safe (buffer flush before the offset commit,
version folder before ``CURRENT``, ``CURRENT`` before the announcement); the fault tests prove it by
killing a real trainer process at each step with SIGKILL (no cleanup, no ``finally``), then restarting
it. Unset, a crash point is one dictionary lookup.

>>> crash_point("after_buffer_flush")  # COLDSTART_CRASH_AT is not set: nothing happens
"""

from __future__ import annotations

import os
import signal

# Every crash point in the code, in the order a round reaches them.
POINTS = ("after_buffer_flush", "after_version_rename", "after_current", "before_announcement")


def crash_point(name: str) -> None:
    """SIGKILL this process when ``COLDSTART_CRASH_AT`` names this point."""
    if os.environ.get("COLDSTART_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
