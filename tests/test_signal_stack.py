"""otx._signal_stack: a thread whose alternate signal stack was unmapped gets a usable one again."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# In a child process: the alternate signal stack set to memory that is then unmapped (what OpenVINO's
# CPU plugin leaves behind), a Python SIGCHLD handler (as torch's data loader installs), then a child
# of its own whose exit sends SIGCHLD.
SCRIPT = """
import ctypes, signal, subprocess, sys
from otx._signal_stack import _StackT, repair_signal_stack
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
print(repair_signal_stack())  # a usable stack is left as it is
size = 1 << 16
stack = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
assert libc.sigaltstack(ctypes.byref(_StackT(stack, 0, size)), None) == 0
libc.munmap(stack, size)
signal.signal(signal.SIGCHLD, lambda *args: None)
if sys.argv[1] == "repair":
    print(repair_signal_stack())
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("delivered")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and mincore through libc: Linux")
def test_an_unmapped_signal_stack_is_replaced_so_a_signal_can_be_handled() -> None:
    repaired = subprocess.run([sys.executable, "-c", SCRIPT, "repair"], capture_output=True, text=True, timeout=60)
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.split() == ["False", "True", "delivered"]
    # Without the repair the kernel cannot deliver the signal: the process ends with SIGSEGV.
    left = subprocess.run([sys.executable, "-c", SCRIPT, "leave"], capture_output=True, text=True, timeout=60)
    assert left.returncode == -signal.SIGSEGV and left.stdout.split() == ["False"]
