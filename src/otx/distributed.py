"""Several processes: which one this is, how images are split between them, how results are joined.

otx runs distributed through Lightning: ``otx train --trainer.devices N --trainer.strategy ddp``
(the ``Trainer`` launches the other processes by running the same command again), ``otx test`` /
``otx predict --devices N`` (Lightning ``Fabric``, the same launcher), or processes started by
``torchrun`` / SLURM (``--trainer.num_nodes M``; Lightning reads their environment). The
collectives are ``torch.distributed``'s on Lightning's process group (``gloo`` on CPUs).

What makes the results exact (docs/scale.md):

- ``ShardSampler`` splits a loader's order between processes. One-pass models (PADIM, PatchCore)
  and evaluation get each image exactly once, with no padding; models trained by gradient get
  the padded split of ``DistributedSampler`` (every process must make the same number of steps).
- Validation and test outputs are gathered with each image's index, sorted and de-duplicated, so
  thresholds and metrics are computed on exactly the outputs one process would have.
- Only the process of global rank 0 writes into the work directory; the others run in a scratch
  run folder that is removed when the verb ends (``secondary``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from otx.errors import OTXConfigError, OTXError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI asks `secondary()` before loading it
    import torch

T = TypeVar("T")

# Lightning strategies that run the work in child processes whose state is lost to the caller,
# or that shard the model itself: otx's verbs need every process to run the verb (strategy ddp).
SUPPORTED_STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")


class SecondaryRankDone(Exception):  # noqa: N818 - not an error: the end of a secondary process's share
    """Raised in a process of rank > 0 when its share of a distributed verb is done (rank 0 writes)."""


def _env_int(name: str) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else 0


def secondary() -> bool:
    """Whether a launcher started this process as one of rank > 0 (it must not write into the work dir).

    Read from the environment, so it is known before any process group exists. A rank counts only
    beside what says there are other processes: ``WORLD_SIZE`` above 1 for ``RANK`` and
    ``LOCAL_RANK`` (torchrun and Lightning's launcher set it), ``SLURM_NTASKS`` above 1 for
    ``SLURM_PROCID``, and ``MASTER_ADDR`` (or ``WORLD_SIZE``) for ``NODE_RANK`` (a machine started by
    hand). Before, a rank variable left in the environment (a container's, a notebook's, an outer
    launcher's) made a one-process command skip its work and exit 0 without a word.
    """
    dist = sys.modules.get("torch.distributed")  # not imported: no process group
    if dist is not None and dist.is_available() and dist.is_initialized():  # it decides (Lightning's teardown
        return dist.get_rank() > 0  # removes WORLD_SIZE after a fit, while a script's group lives on)
    several = _env_int("WORLD_SIZE") > 1
    if several and (_env_int("RANK") or _env_int("LOCAL_RANK")):
        return True
    if _env_int("SLURM_PROCID") and _env_int("SLURM_NTASKS") > 1:
        return True
    return bool(_env_int("NODE_RANK") and (several or os.environ.get("MASTER_ADDR", "").strip()))


_ALONE = threading.local()


@contextmanager
def alone() -> Iterator[None]:
    """Run the current thread's verb in this process only, while a script's process group lives on.

    ``export``, ``optimize`` and ``benchmark`` run in rank 0 of a distributed script (the others skip
    them): their data passes (``otx optimize``'s box check) must not split images or gather from
    processes that are not there (before: rank 0 waited on a collective and failed, "Connection
    closed by peer", once the other process had ended).
    """
    before = getattr(_ALONE, "on", False)
    _ALONE.on = True
    try:
        yield
    finally:
        _ALONE.on = before


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group; ``(0, 1)`` without one, or ``alone``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and not getattr(_ALONE, "on", False):
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: T) -> list[T]:
    """Every process's ``obj``, in rank order (pickled; tensors should be on the CPU); ``[obj]`` alone."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: T, src: int = 0) -> T:
    """Process ``src``'s ``obj`` in every process; ``obj`` itself without a process group."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    _, world = rank_and_world()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes (in place; ``tensor`` alone without a group)."""
    _, world = rank_and_world()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def join_by_index(parts: list[dict[str, torch.Tensor]], key: str = "index") -> dict[str, torch.Tensor]:
    """Concatenate output dicts (one per batch or process), sort by ``key`` and drop repeated indices.

    Repeats are the samples a padded split gave to two processes; what is left is exactly what
    one process would have produced, in the data's order. ``key`` is removed. The parts are
    emptied as they are joined (each batch's tensors are freed once copied), and outputs that
    arrive in order without repeats (one process) are not copied a second time: on
    magnetic_tile's test split each copy of the maps is 76 MB.
    """
    import torch

    index = torch.cat([part.pop(key) for part in parts])
    order = torch.argsort(index, stable=True)
    keep = torch.ones(len(index), dtype=torch.bool)
    keep[1:] = index[order][1:] != index[order][:-1]
    in_order = bool(keep.all()) and bool(torch.equal(order, torch.arange(len(order))))
    chosen = order[keep]
    joined = {}
    for name in list(parts[0]):
        values = torch.cat([part.pop(name) for part in parts])
        joined[name] = values if in_order else values[chosen]
    return joined


class ShardSampler:
    """One process's share of a base order, like ``DistributedSampler`` but exact.

    A loader's ``sampler`` (any iterable of indices with a length). The order is cut into blocks
    of ``block`` indices (the model's batch, ``images_per_batch``) dealt out in turn, so that every batch holds
    the images it holds in a one-process run (outputs that depend on the batch, such as the
    rounding of batched convolutions, are then the same too). ``padding``:

    - ``"none"``: each index once; processes may get different numbers of batches (evaluation
      outside Lightning's loops).
    - ``"mark"``: each index once, and a process with a block fewer gets one place holder (the
      negative ``-i - 1`` of an index: the dataset loads image ``i`` and marks it, and
      ``drop_padding`` removes it), because Lightning's loops need the same number of batches
      in every process. For one-pass fitting and validation.
    - ``"repeat"``: single indices dealt out, some repeated from the start so that every process
      gets the same number, as ``DistributedSampler`` does (gradient training).

    Args:
        base: the full order (a sampler, e.g. ``EpochShuffleSampler``, or a sequence of indices).
        rank: this process's rank.
        world: number of processes.
        padding: ``none``, ``mark`` or ``repeat``.
        block: indices dealt out together. With ``"none"`` (test, predict) whole even when there are
            too few for one block per process (the later processes get fewer images or none): a smaller
            block would change the batches, and batched convolutions round differently in the last
            bits. With ``"mark"`` (one-pass fitting, validation) fewer when there are too few blocks for
            one per process, so that every process gets images: a process that fits on none has no
            statistics to share.
    """

    def __init__(
        self, base: Iterable[int] | Sequence[int], rank: int, world: int, padding: str, block: int = 1
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        if padding not in ("none", "mark", "repeat"):
            raise ValueError(f"padding must be none, mark or repeat (got {padding!r})")
        self.base = base
        self.rank = rank
        self.world = world
        self.padding = padding
        if padding == "repeat":
            self.block = 1
        elif padding == "none":
            self.block = max(1, block)
        elif -(-len(base) // max(1, block)) >= world:  # a whole block for every process
            self.block = max(1, block)
        else:
            self.block = max(1, min(block, -(-len(base) // world)))

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the base order (Lightning calls it each epoch)."""
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _mine(self, order: list[int]) -> list[int]:
        if self.padding == "repeat" and order:
            total = -(-len(order) // self.world) * self.world
            order = (order * (total // len(order) + 1))[:total]
        blocks = [order[i : i + self.block] for i in range(0, len(order), self.block)]
        mine = blocks[self.rank :: self.world]
        if self.padding == "mark" and order and len(mine) < -(-len(blocks) // self.world):
            mine.append([-order[0] - 1])
        return [index for block in mine for index in block]

    def __len__(self) -> int:
        return len(self._mine(list(range(len(self.base)))))

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine(list(iter(self.base))))


def drop_padding(batch: dict[str, Any]) -> dict[str, Any] | None:
    """``batch`` without the place holders of a ``"mark"`` split (negative ``index``); None if nothing is left."""
    import torch

    if "index" not in batch:  # a batch made by hand, not by a loader
        return batch
    index = torch.as_tensor(batch["index"])
    keep = index >= 0
    if bool(keep.all()):
        return batch
    if not bool(keep.any()):
        return None
    rows = keep.nonzero().flatten().tolist()
    kept: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == len(keep):
            kept[key] = value[keep]
        elif isinstance(value, list | tuple) and len(value) == len(keep):
            kept[key] = [value[i] for i in rows]
        else:
            kept[key] = value
    return kept


def check_strategy(strategy: Any, processes: int) -> None:
    """One line for a strategy otx cannot run verbs with (several processes need ``ddp``)."""
    if processes <= 1 or not isinstance(strategy, str):
        return
    if strategy not in SUPPORTED_STRATEGIES:
        raise OTXConfigError(
            f"strategy '{strategy}' is not supported for {processes} processes: otx runs each process through "
            f"the whole command (strategy ddp; also {', '.join(SUPPORTED_STRATEGIES[2:])}); pass --trainer.strategy ddp"
        )


def check_cpu_processes(devices: int) -> None:
    """One line when more CPU processes are asked for than the machine has cores."""
    if devices > (os.cpu_count() or 1):
        raise OTXConfigError(
            f"devices {devices} on the CPU: more processes than this machine has CPU cores; "
            "pass at most as many devices as `nproc` prints"
        )


def check_relaunchable(processes: int) -> None:
    """One line when Lightning could not start this machine's other processes, before it tries.

    Lightning starts them by running the program again: ``python <sys.argv[0]> ...`` (``python -m
    <module>`` for a module). A program read from standard input (``python -``) or given by ``python
    -c`` has no script to run: the started processes failed to open '-', and Lightning then killed the
    calling process (exit 137, without a word; a bug bash found it). Processes a launcher started
    (torchrun, SLURM: ``LOCAL_RANK`` or the launcher's variables set) are not started by Lightning.
    """
    import __main__

    if processes <= 1 or any(name in os.environ for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS")):
        return
    if getattr(__main__, "__spec__", None) is not None:  # python -m module: run again the same way
        return
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.isfile(script):
        return
    raise OTXConfigError(
        f"{processes} processes on this machine are started by running this program again, but it has no "
        f"script file (sys.argv[0] is {script!r}: python - or python -c); save it as a .py file and run that, "
        "or run one process (devices 1)"
    )


# Variables with which a machine of a multi-machine run learns where the first one is (by hand:
# MASTER_ADDR and NODE_RANK; torchrun: those and WORLD_SIZE; SLURM, MPI and LSF: their own).
_NODE_VARIABLES = (
    "MASTER_ADDR",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",  # MPI (Lightning's MPIEnvironment)
    "PMI_SIZE",
    "LSB_JOBID",  # LSF (Lightning's LSFEnvironment)
    "JSM_NAMESPACE_SIZE",
)


def check_nodes(num_nodes: int, option: str) -> None:
    """One line when the machine count ``num_nodes`` disagrees with what the environment says.

    - More than one machine, but no launcher says how to reach the others: the first machine would
      wait for them forever (a signal cannot reach it there: it waits inside the process-group set-up).
    - One machine, but this one is numbered (``NODE_RANK`` > 0): it would take itself for a machine
      of rank > 0, work in a scratch folder, write nothing and exit 0 while the first trained alone.

    Inside a process group that exists already (a script's second verb) the group decides.
    ``option`` is how the caller gives the count.
    """
    if rank_and_world()[1] > 1:
        return
    if num_nodes > 1 and not any(os.environ.get(name, "").strip() for name in _NODE_VARIABLES):
        raise OTXConfigError(
            f"{option} {num_nodes}: nothing says how to reach the other machines, so this one would wait for them "
            "forever; start the command on every machine with MASTER_ADDR, MASTER_PORT and NODE_RANK, or through "
            "torchrun or SLURM (docs/scale.md); on one machine, give the process count as devices instead"
        )
    node = _env_int("NODE_RANK")
    if num_nodes == 1 and node and _env_int("WORLD_SIZE") <= 1:
        raise OTXConfigError(
            f"NODE_RANK={node} is set, which numbers this machine in a run over several, but --{option} is 1: "
            f"pass --{option} M (the number of machines) on every machine, or unset NODE_RANK"
        )


MEETING_NOTE_S = 30.0  # how long the processes may take to meet before each machine says it is waiting
MEETING: list[tuple[threading.Event, Any]] = []  # (set while waiting, the launcher's owner) per meeting under way


@contextmanager
def meeting(world: int, num_nodes: int, option: str, owner: Any = None) -> Iterator[None]:
    """Around a call that sets up the process group of ``world`` processes (``num_nodes`` machines).

    The set-up waits, inside torch, for every process to connect: a machine whose first machine
    never comes up (a mistyped ``MASTER_ADDR``, rank 0 not started) waited for torch's 30-minute
    timeout and printed nothing (only rank 0 reports). Now the first process of each machine says
    so in one line after ``MEETING_NOTE_S`` seconds (``OTX_MEETING_NOTE_S`` overrides it), and the
    console script ends at once on Ctrl-C or SIGTERM while the wait lasts (``meeting_now``; nothing
    has been computed or written there), with the processes Lightning started for ``owner`` (a
    ``Trainer`` or a ``Fabric``: ``end_meeting``). ``option`` is how the caller gives the machine
    count. Inside a process group that exists already, or for one process, nothing happens.
    """
    if world <= 1 or rank_and_world()[1] > 1:
        yield
        return
    waiting = threading.Event()
    waiting.set()
    entry = (waiting, owner)
    MEETING.append(entry)
    _hold_stops_off_main_thread()
    delay = float(os.environ.get("OTX_MEETING_NOTE_S") or MEETING_NOTE_S)
    watch = threading.Thread(target=_watch_meeting, args=(world, num_nodes, option, delay, waiting), daemon=True)
    watch.start()
    try:
        yield
    finally:
        waiting.clear()
        if entry in MEETING:
            MEETING.remove(entry)
        release_stops()


STOP_LISTENER: list[bool] = []  # non-empty while the console script's listener thread hears stops (otx.cli)
_STOPS_HELD: list[bool] = []  # non-empty while the main thread blocks SIGINT and SIGTERM (``meeting``)
# the signals otx takes as a stop: Ctrl-C, a supervisor's or CI job's cancel, and a dropped terminal or SSH session
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _hold_stops_off_main_thread() -> None:
    """Block SIGINT and SIGTERM in the main thread while the processes meet, so the listener's thread takes them.

    A stop that interrupts torch's wait between two connection attempts made it print a warning with a
    C++ stack of 50 frames (``TCPStore ... Interrupted system call``) on machines 1 and up. Done only
    where the listener runs (the console script), from the main thread. Processes started meanwhile
    inherit the mask: the CLI unblocks both at its start.
    """
    if STOP_LISTENER and not _STOPS_HELD and threading.current_thread() is threading.main_thread():
        if hasattr(signal, "pthread_sigmask"):  # not on Windows
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            _STOPS_HELD.append(True)


def release_stops() -> None:
    """Let SIGINT and SIGTERM reach the main thread again (main thread only)."""
    if _STOPS_HELD and threading.current_thread() is threading.main_thread():
        _STOPS_HELD.clear()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def met() -> None:
    """The processes have met (a barrier among them has passed): the meetings' waits end, stops reach the main thread.

    Not the process group's existence: machines told different machine counts (2 on one, 3 on the
    other) form it on the first and then wait in its first barrier, which is still the meeting.
    """
    for waiting, _ in MEETING:
        waiting.clear()
    release_stops()


def meeting_now() -> bool:
    """Whether this process is waiting for the others of a distributed run to meet (``meeting``)."""
    return any(waiting.is_set() for waiting, _ in MEETING)


def end_meeting() -> None:
    """End the processes Lightning started for the meetings under way (before this one exits without them)."""
    for _, owner in list(MEETING):
        if owner is not None:
            end_launched(owner)


def _local_rank_and_node() -> tuple[int, int]:
    """The rank of this process on its machine, and the machine's number (Lightning's, torchrun's or SLURM's)."""
    local = _env_int("LOCAL_RANK") if os.environ.get("LOCAL_RANK", "").strip() else _env_int("SLURM_LOCALID")
    node = _env_int("NODE_RANK") if os.environ.get("NODE_RANK", "").strip() else _env_int("SLURM_NODEID")
    return local, node


def _watch_meeting(world: int, num_nodes: int, option: str, delay: float, waiting: threading.Event) -> None:
    start = time.monotonic()
    said = False
    while waiting.is_set():  # until the processes have met (``met``) or the meeting's call has ended
        time.sleep(0.2)
        if said or not waiting.is_set() or time.monotonic() - start < delay:
            continue
        said = True
        local, node_rank = _local_rank_and_node()
        if local:  # one line per machine
            continue
        address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"
        where = f"{world} processes on {num_nodes} machines" if num_nodes > 1 else f"{world} processes"
        node = f", this is machine {node_rank}" if num_nodes > 1 else ""
        hint = (
            f"start the same command on every machine (NODE_RANK 0 included) with the same MASTER_ADDR, MASTER_PORT "
            f"and {option}"
            if num_nodes > 1
            else "a process that could not start says why above"
        )
        sys.stderr.write(
            f"otx: still waiting for the run's other processes after {delay:g} s ({where}, meeting at {address}"
            f"{node}): {hint}; Ctrl-C stops\n"
        )
        sys.stderr.flush()


def port_in_use(exc: BaseException) -> OTXError | None:
    """One line for a process-group set-up that failed because its port is taken; None for other failures."""
    if "EADDRINUSE" not in str(exc) and "address already in use" not in str(exc):
        return None
    port = os.environ.get("MASTER_PORT", "").strip()
    return OTXError(
        f"the port the processes meet on{f' ({port}, MASTER_PORT)' if port else ''} is in use by another "
        "program; pass another MASTER_PORT, or leave it unset on one machine (Lightning picks a free one)"
    )


# The processes a launcher started for this one's verb (rank 0 only), for ``peer_gone``'s line, and the
# process ids otx itself ended (``_end_processes``), whose deaths are not reported.
WATCHED: list[Any] = []
ENDED_BY_OTX: set[int] = set()
PEER_EXIT_WAIT_S = 5.0  # how long ``peer_gone`` waits for a lost process's exit code
LAUNCHED: list[Any] = []  # the processes ``launch`` started for an evaluation (rank 0 only; ``stop_launched``)


def stop_launched() -> None:
    """SIGTERM the evaluation processes this one launched that still run (its verb failed or was stopped).

    Fabric's launcher does not pass a stop on as Lightning's Trainer does: after SIGTERM to the
    first process of ``otx predict --devices 2`` the second went on alone, wrote masks into the
    failed run folder and then printed gloo's "Connection closed by peer" as an internal error.
    """
    for process in LAUNCHED:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    LAUNCHED.clear()


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is gloo's word that another process of the run went away."""
    text = str(exc)
    # gloo's own words (the process group may be gone by now, so the world size cannot tell)
    return "gloo" in text and any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    )


def _await_an_exit(procs: list[Any]) -> None:
    """Wait up to ``PEER_EXIT_WAIT_S`` for one of ``procs`` to have ended (none: at once).

    A killed process's sockets close before the kernel lets its exit code be read: under load this
    process's collective failed that much earlier, saw the lost process still running, and its line
    named no process (a CI run).
    """
    deadline = time.monotonic() + PEER_EXIT_WAIT_S
    while procs and all(process.poll() is None for process in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


def peer_gone(exc: BaseException) -> OTXError | None:
    """One line when a collective failed because another process of the run had stopped (its error is its own)."""
    if not _peer_lost(exc):
        return None
    _await_an_exit(WATCHED)
    codes = [process.poll() for process in WATCHED]
    if any(code is not None and code > 0 for code in codes):  # one that failed printed its own error
        codes = []
    for index, (process, code) in enumerate(zip(WATCHED, codes, strict=False), start=2):
        # a started process killed by a signal (not otx's own) says nothing itself
        if code is not None and code < 0 and process.pid not in ENDED_BY_OTX:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = " (by the system when memory runs out, or by kill -9)" if -code == signal.SIGKILL else ""
            return OTXError(
                f"another process of this run stopped before this one could finish: process {index} was killed by "
                f"{name}{why}; fix that and run again"
            )
    return OTXError(
        "another process of this run stopped before this one could finish (its own error, if any, is printed "
        "above); fix that and run again"
    )


def end_launched(owner: Any, exc: BaseException | None = None) -> None:
    """End the processes Lightning's launcher started for ``owner`` (a ``Trainer`` or a ``Fabric``) when this one fails.

    Lightning ends them after Ctrl+C, not after an error: a first process that failed in its
    process-group set-up (a port in use) left the second one waiting for it for ever, deaf to
    Ctrl+C and SIGTERM, holding the terminal's pipe. Both launchers (Lightning's and Fabric's)
    keep the processes they started in ``procs``; none where torchrun or SLURM started them.
    ``exc``: this process's error; where it says a process went away, that process's end is
    awaited first, so that ``peer_gone`` names it rather than count it among those otx ended.
    """
    launcher = getattr(getattr(owner, "strategy", None), "launcher", None)
    procs = getattr(launcher, "procs", None) or []
    if exc is not None and _peer_lost(exc):
        _await_an_exit(procs)
    _end_processes(procs)


def spare_this_process(owner: Any) -> None:
    """Lightning's watcher of the processes its launcher started for ``owner`` no longer kills this one.

    When a started process ends with an error code, the watcher (a thread, every 5 s) SIGKILLs every
    process, this one too: a process killed by the system for memory, or by ``kill -9``, ended the
    command with exit 137, no line and a run folder not marked failed; and a Python script that
    caught otx's error from a verb of several processes (which ends the others, ``end_launched``)
    was killed seconds later (a scale-out bug bash). Now the watcher ends the other started
    processes only; this one meets the lost process at its next collective (``peer_gone``: one
    line, the run marked failed). Called in the first process once the launcher has started (and
    the process group is up); gloo only (CPU processes), as NCCL may not notice the lost process.
    """
    strategy = getattr(owner, "strategy", None)
    launcher = getattr(strategy, "launcher", None)
    procs = getattr(launcher, "procs", None)
    WATCHED[:] = procs or []
    if not procs:  # one process, or torchrun / SLURM started them: no watcher
        return
    on_cpu = getattr(getattr(strategy, "root_device", None), "type", "cpu") == "cpu"
    backend = getattr(strategy, "process_group_backend", None) or ("gloo" if on_cpu else None)  # None: not up yet
    if backend != "gloo":
        # NCCL may not notice a peer killed outright and wait in its collective until the group's
        # timeout (30 minutes): there Lightning's watcher keeps ending this process too
        return
    for thread in threading.enumerate():
        if getattr(thread, "_child_processes", None) is procs and callable(getattr(thread, "_terminate_all", None)):
            thread._terminate_all = functools.partial(_end_processes, procs)  # type: ignore[attr-defined]


def _end_processes(procs: list[Any]) -> None:
    for process in procs:
        if process.poll() is None:
            ENDED_BY_OTX.add(process.pid)  # not a death to report (peer_gone)
        process.send_signal(signal.SIGKILL)  # one that has ended already is skipped


def check_launched_world(world: int, how: str) -> None:
    """One line when a launcher started this command as more (or fewer) processes than it is told to use.

    torchrun sets ``WORLD_SIZE``; with ``--trainer.devices 1`` each of its processes used to run the
    whole verb alone (rank 0 wrote, the others' work was thrown away) and the run reported
    ``cpu x1``. Inside a process group that exists already (a script's second verb) the group decides;
    only torchrun's processes are checked (``TORCHELASTIC_RUN_ID``): Lightning's launcher re-runs a script
    with ``WORLD_SIZE`` set, and a verb with one device there runs alone on purpose.
    """
    launched = os.environ.get("WORLD_SIZE", "").strip()
    if not os.environ.get("TORCHELASTIC_RUN_ID"):  # not torchrun (Lightning's own launcher, a pod's variables)
        return
    if launched.isdigit() and int(launched) != world and rank_and_world()[1] == 1:
        raise OTXConfigError(
            f"this command was started as one of {launched} processes (WORLD_SIZE, e.g. from torchrun) but {how} "
            f"make {world}: each process would run the whole command alone; give the launcher's count to both"
        )


def launch(processes: int, num_nodes: int = 1) -> None:
    """Start (or, in a launched process, join) an evaluation across ``processes`` x ``num_nodes`` processes.

    Lightning ``Fabric`` with strategy ``ddp`` on the CPU (``gloo``): the first process starts the
    others by running the same command again (or joins the processes torchrun / SLURM started),
    then every process has the process group that ``gather`` uses. One process: nothing to do.
    ``Engine.test`` / ``Engine.predict`` have checked that both numbers are whole numbers >= 1.
    """
    check_nodes(num_nodes, "num_nodes")
    check_launched_world(processes * num_nodes, "--devices x --num_nodes")
    if processes * num_nodes == 1 or rank_and_world()[1] > 1:
        return
    check_cpu_processes(processes)
    check_relaunchable(processes)
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=processes, num_nodes=num_nodes, strategy="ddp")
    try:
        with meeting(processes * num_nodes, num_nodes, "--num_nodes", fabric):
            fabric.launch()
            spare_this_process(fabric)
            LAUNCHED[:] = list(getattr(getattr(fabric.strategy, "launcher", None), "procs", None) or [])
            fabric.barrier()  # every process is there
            met()
    except (ValueError, RuntimeError) as exc:
        # the processes Fabric started wait for this one for ever (before: `otx test --devices 2` with a
        # MASTER_PORT in use printed its error and then hung, the second process holding the terminal)
        end_launched(fabric)
        raise port_in_use(exc) or OTXConfigError(
            f"cannot start {processes} x {num_nodes} processes: {' '.join(str(exc).split())}"
        ) from exc


def ddp_strategy(name: str | None, unused_parameters: bool = True) -> Any:
    """Lightning's DDP strategy for ``name`` (``ddp`` ...), without DDP's buffer broadcast in every forward.

    DDP broadcasts rank 0's buffers in each forward call, a collective: one-pass models (each
    process has its own number of images) and validation (each image once) make different
    numbers of calls per process, and would wait for each other forever. Models trained by
    gradient still get equal padded shares (the gradient all-reduce needs them), and the
    validation loop broadcasts rank 0's buffers (e.g. batch-norm statistics) once before it
    starts (``broadcast_buffers``), so that every process validates rank 0's model.
    """
    from lightning.pytorch.strategies import DDPStrategy

    # Students built from timm's feature extractors hold layers past the last feature layer that
    # take no part in the loss (STFPM's "backbone" student): DDP must look for unused parameters.
    # The model says whether it has any; a strategy that names the setting wins.
    named = {"ddp_find_unused_parameters_true": True, "ddp_find_unused_parameters_false": False}
    unused = named.get(str(name), unused_parameters)
    return DDPStrategy(broadcast_buffers=False, find_unused_parameters=unused)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process process ``src``'s buffers of ``module`` (in place; nothing without a group)."""
    _, world = rank_and_world()
    if world == 1:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
