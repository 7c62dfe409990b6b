"""Keep the calling thread's alternate signal stack usable (OpenVINO's CPU plugin can leave it unmapped).

OpenVINO 2026.4's CPU plugin sets a thread's alternate signal stack for a while (its own, mmap'd)
and unmaps it when done; when that happens on another thread than the one it was set on, the first
thread keeps pointing at the unmapped memory. Python's signal handlers run on that stack (CPython
installs them with ``SA_ONSTACK``), so the next signal with a Python handler, such as a child's
``SIGCHLD`` once torch's data loader has installed its handler, or Ctrl+C, cannot be delivered and
the kernel ends the process with SIGSEGV (``si_code`` SI_KERNEL, the thread in a system call; seen
with gdb on a core of the test suite, AVX-512 machine). ``repair_signal_stack`` gives such a thread a
fresh stack. Linux only: a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import sys
import threading

log = logging.getLogger(__name__)

_SS_DISABLE = 2
_STACK_BYTES = 1 << 18  # 256 KiB: far above AT_MINSIGSTKSZ, also with AVX-512 or AMX state in the frame


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def repair_signal_stack() -> bool:
    """Give the calling thread a new alternate signal stack if its current one is no longer mapped.

    Returns True when it was replaced. Costs two system calls when the stack is fine; never raises
    (a failure is logged and the stack left as it was). ``mincore`` sees unmapped memory only: a
    range the system has mapped again for something else passes as usable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _repair()
    except (OSError, AttributeError, ValueError) as exc:  # no libc symbol, a failed mmap
        log.info("the alternate signal stack was not checked: %s", exc)
        return False


def _repair() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    current = _StackT()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0 or current.ss_flags & _SS_DISABLE or not current.ss_sp:
        return False
    page = mmap.PAGESIZE
    start = current.ss_sp - current.ss_sp % page
    length = current.ss_sp + current.ss_size - start
    pages = (ctypes.c_ubyte * ((length + page - 1) // page))()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), pages) == 0:
        return False  # mapped: in use as set
    if ctypes.get_errno() != errno.ENOMEM:  # ENOMEM: part of the range is not mapped
        return False
    # Private (a forked data-loader worker gets its own copy, not the same pages) and never unmapped,
    # also not at interpreter exit, while Python's handlers are still installed: libc's mmap, not Python's.
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    stack = libc.mmap(None, _STACK_BYTES, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if stack in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap of a signal stack failed")
    replaced = libc.sigaltstack(ctypes.byref(_StackT(stack, 0, _STACK_BYTES)), None) == 0
    log.info(
        "the alternate signal stack of thread %s was unmapped (OpenVINO's CPU plugin); %s",
        threading.current_thread().name,
        "replaced" if replaced else "could not be replaced",
    )
    return replaced
