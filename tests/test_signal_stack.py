"""Signals in odd places: an unmapped alternate signal stack (otx._signal_stack), a forked child stuck in C code."""

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


# otx's stop handling installed, then a forked multiprocessing child stuck inside C (a mutex locked twice:
# what OpenVINO's telemetry child met in getaddrinfo), ended as multiprocessing ends one: terminate().
STUCK_CHILD = """
import ctypes, multiprocessing, os, signal, sys, time
from otx import cli

def stuck() -> None:
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # never returns: no bytecode runs, so no Python signal handler does

cli._install_signal_handlers()
child = multiprocessing.get_context("fork").Process(target=stuck, daemon=True)
child.start()
time.sleep(1.0)
child.terminate()
child.join(10)
print(child.exitcode)
if child.is_alive():
    os.kill(child.pid, signal.SIGKILL)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a fork and a glibc mutex: Linux")
def test_a_forked_child_stuck_in_c_code_ends_on_sigterm() -> None:
    # Before: the child inherited otx's Python SIGTERM handler, which never ran, and outlived its parent
    # holding the terminal's pipe (`otx export | tail` never returned; bug bash)
    done = subprocess.run([sys.executable, "-c", STUCK_CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(-signal.SIGTERM)], done.stdout
