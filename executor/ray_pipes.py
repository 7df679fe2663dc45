"""The Ray executor's same-node transport: named pipes between the actors and the driver.

A Ray actor call costs ~0.3-1 ms here, most of a small model's step; a pipe hop ~30 us. When
every actor runs on the driver's node, each runs one long `serve` call (executor/ray_actor.py)
that reads step commands from its pipe and moves tensors by `PipeTransport`.

Messages are pickled (protocol 5; arrays arrive as fresh writable copies) and framed by their
length. Writes never block: what a pipe cannot take yet stays queued and a writer thread
writes it as the reader drains the pipe, so two processes writing big packets to each other
cannot deadlock and a big packet does not wait for its sender to stop computing; a receiver
keeps messages that arrive before it asks for them.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pickle
import select
import shutil
import struct
import tempfile
import threading
import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from executor.errors import ExecutorError
from executor.program import Program, Send, TransferKey, transfer_key

HEADER = struct.Struct("<Q")                 # payload length
PIPE_BYTES = 1 << 20                         # asked of the kernel per pipe (Linux max default)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPIN_SECONDS = 2e-3        # a receive polls this long for a packet before blocking


def default_spin(processes: int) -> float:
    """Seconds an actor of `processes` on this machine polls for a packet: SPIN_SECONDS while
    they are at most two per CPU (measured here: polling helps up to there; beyond it,
    polling processes would share out the CPUs that computing ones need), else 0."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return SPIN_SECONDS if processes <= 2 * cpus else 0.0


class PipeClosed(ExecutorError):
    """The other end asked this endpoint to stop."""


PIPE_DIR_PREFIX = "modelcut-pipes-"


def make_pipe_dir(names: list[str]) -> Path:
    """A fresh directory holding one named pipe (FIFO) per name; /dev/shm when present. Its
    name holds this process's id (`modelcut-pipes-<pid>-<random>`), so a later run can remove
    the directories of drivers that died without cleaning up (`remove_stale_pipe_dirs`)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    remove_stale_pipe_dirs(Path(base or tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"{PIPE_DIR_PREFIX}{os.getpid()}-", dir=base))
    for name in names:
        os.mkfifo(root / name, 0o600)
    return root


def remove_pipe_dir(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def pipe_dir_owner(path: Path) -> int | None:
    """The driver pid a pipe directory's name records (None: not such a name)."""
    rest = path.name[len(PIPE_DIR_PREFIX):] if path.name.startswith(PIPE_DIR_PREFIX) else ""
    pid, sep, _ = rest.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                   # someone else's live process
        return True
    return True


def remove_stale_pipe_dirs(base: Path) -> None:
    """Remove the pipe directories under `base` whose driver process is gone (a driver killed
    with SIGKILL leaves its directory behind). Directories of live processes, of other users
    and without a pid in their name are left alone."""
    try:
        candidates = list(base.glob(f"{PIPE_DIR_PREFIX}*"))
    except OSError:
        return
    for path in candidates:
        pid = pipe_dir_owner(path)
        try:
            if pid is None or path.stat().st_uid != os.getuid() or _alive(pid):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


class _Reader:
    """Frames arriving on one pipe: a header, then the payload read into a preallocated
    buffer, then unpickled."""

    def __init__(self, fd: int):
        self.fd = fd
        self.header = bytearray()
        self.body: bytearray | None = None
        self.filled = 0
        self.messages: deque = deque()

    def drain(self) -> None:
        """Read whatever the pipe holds now (non-blocking)."""
        while True:
            try:
                if self.body is None:
                    chunk = os.read(self.fd, HEADER.size - len(self.header))
                    if not chunk:
                        return
                    self.header += chunk
                    if len(self.header) == HEADER.size:
                        (n,) = HEADER.unpack(self.header)
                        self.header = bytearray()
                        self.body, self.filled = bytearray(n), 0    # n > 0: a pickle
                    continue
                got = os.readv(self.fd, [memoryview(self.body)[self.filled:]])
                if got == 0:
                    return
                self.filled += got
                if self.filled == len(self.body):
                    self.messages.append(pickle.loads(self.body))
                    self.body = None
            except BlockingIOError:
                return


class Endpoint:
    """One process's pipes: `send(peer, tag, value)` and `receive(peer, tag)` of pickled
    messages; `peer` names a pipe pair given at construction (read path, write path)."""

    def __init__(self, reads: dict[Hashable, str | Path], writes: dict[Hashable, str | Path]):
        # O_RDWR opens a FIFO at once whether or not the other end is open yet (Linux)
        self.readers = {peer: _Reader(self._open(path)) for peer, path in reads.items()}
        self.writes = {peer: self._open(path) for peer, path in writes.items()}
        self.pending: dict[int, deque] = {fd: deque() for fd in self.writes.values()}
        self.by_fd = {r.fd: r for r in self.readers.values()}
        self.cond = threading.Condition()     # guards `pending` and writes to the pipes
        self.writer: threading.Thread | None = None
        self.closing = False

    @staticmethod
    def _open(path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        with suppress(OSError):               # a smaller limit: the default size works too
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        return fd

    def send(self, peer: Hashable, tag, value) -> None:
        """Write (tag, value) for `peer`: what the pipe takes now, the rest by the writer
        thread (messages to one peer keep their order)."""
        payload = pickle.dumps((tag, value), protocol=5)
        fd = self.writes[peer]
        with self.cond:
            queue = self.pending[fd]
            queue.extend((memoryview(HEADER.pack(len(payload))), memoryview(payload)))
            self._write(fd)
            if queue:
                if self.writer is None:
                    self.writer = threading.Thread(target=self._write_behind, daemon=True,
                                                   name="modelcut-pipe-writer")
                    self.writer.start()
                self.cond.notify_all()

    def _write(self, fd: int) -> None:
        """Write queued bytes to fd until the pipe is full (caller holds `cond`); one writev
        for a header and its payload, so a blocked reader is woken once per message."""
        queue = self.pending[fd]
        while queue:
            try:
                n = os.writev(fd, list(queue)[:64])
            except BlockingIOError:
                return
            while n and n >= len(queue[0]):
                n -= len(queue.popleft())
            if n:
                queue[0] = queue[0][n:]

    def _write_behind(self) -> None:
        """The writer thread: write queued bytes whenever their pipe has room."""
        while True:
            with self.cond:
                while not self.closing and not any(self.pending.values()):
                    self.cond.wait()
                if self.closing:
                    return
                for fd, queue in self.pending.items():
                    if queue:
                        self._write(fd)
                waiting = [fd for fd, queue in self.pending.items() if queue]
                self.cond.notify_all()            # flush() waits for empty queues
            if waiting:
                with suppress(OSError, ValueError):   # closed under us: close() ends the loop
                    select.select([], waiting, [], 0.1)

    def flush(self) -> None:
        """Wait until everything queued is written, reading meanwhile (so peers writing to
        this process progress)."""
        while True:
            with self.cond:
                if not any(self.pending.values()):
                    return
            self._pump(None, None, timeout=1e-3)

    def receive(self, peer: Hashable, tag, alive: Callable[[], None] | None = None,
                spin: float = 0.0):
        """The value sent by `peer` under `tag` (earlier or later tags are kept for their own
        receive). A value of None under tag "stop" raises PipeClosed. `alive` is called
        every second of waiting and may raise to give up. `spin`: seconds of polling the pipe
        before blocking, yielding the CPU to any other process that wants it (for a process
        alone on its CPU: the writer then wakes nobody, and the CPU does not go idle, whose
        wake-up costs ~0.1 ms on a virtual machine)."""
        reader = self.readers[peer]
        deadline = time.monotonic() + spin if spin > 0 else None
        while True:
            for i, (t, value) in enumerate(reader.messages):
                if t == tag or t == "stop":
                    del reader.messages[i]
                    if t == "stop":
                        raise PipeClosed("the driver stopped this endpoint")
                    return value
            # no polling while the writer thread has bytes to write: it needs the GIL
            if (deadline is not None and time.monotonic() < deadline
                    and not any(self.pending.values())):
                os.sched_yield()              # a process woken on this CPU runs first
                reader.drain()
                continue
            self._pump(reader, alive)

    def _pump(self, reader: _Reader | None, alive, timeout: float = 1.0) -> None:
        """Wait until some pipe can be read (at most `timeout`), then read what is ready;
        `alive` is called after a full second of nothing."""
        if reader is not None:
            reader.drain()
            if reader.messages:
                return
        ready, _, _ = select.select(list(self.by_fd), [], [], timeout)
        if not ready and timeout >= 1.0 and alive is not None:
            alive()
        for fd in ready:
            self.by_fd[fd].drain()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.writer is not None:
            self.writer.join(timeout=1.0)
        for fd in list(self.by_fd) + list(self.writes.values()):
            try:
                os.close(fd)
            except OSError as e:               # already closed
                if e.errno != errno.EBADF:
                    raise
        self.by_fd, self.writes = {}, {}


PACKET = "tensors"                # the tag of the messages between two devices


def send_runs(program: Program) -> frozenset[TransferKey]:
    """The keys of the Send steps that end a run of consecutive Sends in a block: after one,
    a PipeTransport writes the run's tensors as one message per target (nothing runs between
    the Sends of a run, so no tensor leaves later than it would alone)."""
    return frozenset(transfer_key(program, block, step) for block in program.blocks
                     for step, after in zip(block.steps, block.steps[1:] + (None,))
                     if isinstance(step, Send) and not isinstance(after, Send))


class PipeTransport:
    """A device's Send and Recv steps over its Endpoint: a run of consecutive Sends
    (`send_runs`) as one message per target, a dict TransferKey -> (value, arrival); a
    receive reads packets from the source's pipe until its tensor is there (`spin`:
    Endpoint.receive). Counts the bytes sent to each device and the seconds spent waiting."""

    def __init__(self, endpoint: Endpoint, program: Program, k: int, spin: float = 0.0):
        self.endpoint, self.spin = endpoint, spin
        self.run_ends = send_runs(program)
        self.outgoing: dict[int, dict[tuple, tuple]] = {}
        self.box: dict[TransferKey, tuple[np.ndarray, float | None]] = {}
        self.sent_bytes = np.zeros(k, dtype=np.int64)
        self.wait_seconds = 0.0

    def send(self, key: TransferKey, value: np.ndarray, arrival: float | None = None) -> None:
        # plain tuples on the wire: a NamedTuple pickles ~10x slower (its class is looked up
        # by name); they hash and compare equal to the TransferKeys the receiver asks for
        self.outgoing.setdefault(key.target, {})[tuple(key)] = (value, arrival)
        self.sent_bytes[key.target] += value.nbytes
        if key in self.run_ends:
            for target, packet in self.outgoing.items():
                self.endpoint.send(target, PACKET, packet)
            self.outgoing = {}

    def receive(self, key: TransferKey) -> tuple[np.ndarray, float | None]:
        if key not in self.box:
            start = time.perf_counter()
            while key not in self.box:
                self.box.update(self.endpoint.receive(key.source, PACKET, spin=self.spin))
            self.wait_seconds += time.perf_counter() - start
        return self.box.pop(key)
