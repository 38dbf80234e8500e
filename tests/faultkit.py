"""The nativevlm command (or any script) in a subprocess with `utils.atomic.fault_point` replaced: at the
named point, for a path ending in `suffix`, the process sleeps `action` seconds (so a test can kill it right
there) or, with action "exit", dies on the spot (`os._exit`: no cleanup, no finally, as under SIGKILL)."""
from __future__ import annotations

import sys

KILLED = 137

_PRELUDE = """
import os, sys, time
from nativevlm.utils import atomic
_name, _suffix, _action = sys.argv[1:4]
del sys.argv[1:4]

def _fault(point, path):
    if point == _name and str(path).endswith(_suffix):
        if _action == "exit":
            os._exit(137)
        time.sleep(float(_action))

atomic.fault_point = _fault
"""

_CLI = _PRELUDE + """
from nativevlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def command(point: str, suffix: str, action: str, *argv: str) -> list[str]:
    """argv for `nativevlm *argv` with the fault installed."""
    return [sys.executable, "-c", _CLI, point, suffix, action, *argv]


def script(point: str, suffix: str, action: str, code: str, *argv: str) -> list[str]:
    """argv for running `code` (which reads its own arguments from sys.argv[1:]) with the fault installed."""
    return [sys.executable, "-c", _PRELUDE + code, point, suffix, action, *argv]
