"""The Ray executor's same-node transport: named pipes between the actors and the driver.

Ray's compiled-graph channels cost ~0.3-1 ms per hop here (their readers spin, then poll),
which is most of a small model's step. When every actor runs on the driver's node, the step
can bypass Ray: each actor runs one long `serve` call that reads a step command from its
pipe, runs its calls of the routes in order, reading packets from and writing packets to
one pipe per pair of devices, and writes its report back; a blocked read wakes as soon as
the bytes arrive (a hop costs ~30 us). Ray still places, restarts and kills the actors.

Messages are pickled (protocol 5; arrays arrive as fresh writable copies) and framed by a
length and a tag. Writes never block: what a pipe cannot take yet stays queued and is
written while the process waits to read, so two processes writing big packets to each other
cannot deadlock; a receiver keeps messages that arrive before it asks for them.
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
import time
from collections import deque
from pathlib import Path
from typing import Callable, Hashable

from executor.errors import ExecutorError

HEADER = struct.Struct("<Q")                 # payload length
PIPE_BYTES = 1 << 20                         # asked of the kernel per pipe (Linux max default)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SEND_PATIENCE = 2e-3       # a send keeps writing while a reader drains the pipe this recently


class PipeClosed(ExecutorError):
    """The other end asked this endpoint to stop."""


def make_pipe_dir(names: list[str]) -> Path:
    """A fresh directory holding one named pipe (FIFO) per name; /dev/shm when present."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="modelcut-pipes-", dir=base))
    for name in names:
        os.mkfifo(root / name, 0o600)
    return root


def remove_pipe_dir(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


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
                        self.body, self.filled = bytearray(n), 0
                        if n == 0:
                            self._finish()
                    continue
                got = os.readv(self.fd, [memoryview(self.body)[self.filled:]])
                if got == 0:
                    return
                self.filled += got
                if self.filled == len(self.body):
                    self._finish()
            except BlockingIOError:
                return

    def _finish(self) -> None:
        self.messages.append(pickle.loads(self.body))
        self.body = None


class Endpoint:
    """One process's pipes: `send(peer, tag, value)` and `receive(peer, tag)` of pickled
    messages; `peer` names a pipe pair given at construction (read path, write path)."""

    def __init__(self, reads: dict[Hashable, str | Path], writes: dict[Hashable, str | Path]):
        # O_RDWR opens a FIFO at once whether or not the other end is open yet (Linux)
        self.readers = {peer: _Reader(self._open(path)) for peer, path in reads.items()}
        self.writes = {peer: self._open(path) for peer, path in writes.items()}
        self.pending: dict[int, deque] = {fd: deque() for fd in self.writes.values()}
        self.by_fd = {r.fd: r for r in self.readers.values()}

    @staticmethod
    def _open(path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:                       # a smaller limit: the default size works too
            pass
        return fd

    # ------------------------------------------------------------ writing
    def send(self, peer: Hashable, tag, value) -> None:
        """Queue (tag, value) for `peer` and write as much as the pipe takes, waiting while the
        reader keeps draining it (so a waiting receiver gets a big packet at once)."""
        payload = pickle.dumps((tag, value), protocol=5)
        fd = self.writes[peer]
        queue = self.pending[fd]
        queue.append(memoryview(HEADER.pack(len(payload)) + payload))
        last = time.monotonic()
        while queue:
            if self._write(fd):
                last = time.monotonic()
            elif time.monotonic() - last > SEND_PATIENCE:
                return                        # the rest goes out while this process waits
            else:
                select.select([], [fd], [], SEND_PATIENCE)

    def _write(self, fd: int) -> bool:
        """Write queued bytes to fd until the pipe is full; whether any were written."""
        queue, wrote = self.pending[fd], False
        while queue:
            try:
                n = os.write(fd, queue[0])
            except BlockingIOError:
                return wrote
            wrote = True
            if n == len(queue[0]):
                queue.popleft()
            else:
                queue[0] = queue[0][n:]
        return wrote

    def flush(self, alive: Callable[[], None] | None = None) -> None:
        """Write everything queued (reading meanwhile, so peers writing to us progress)."""
        while any(self.pending.values()):
            self._pump(None, alive)

    # ------------------------------------------------------------ reading
    def receive(self, peer: Hashable, tag, alive: Callable[[], None] | None = None):
        """The value sent by `peer` under `tag` (earlier or later tags are kept for their own
        receive). A value of None under tag "stop" raises PipeClosed. `alive` is called
        every second of waiting and may raise to give up."""
        reader = self.readers[peer]
        while True:
            for i, (t, value) in enumerate(reader.messages):
                if t == tag or t == "stop":
                    del reader.messages[i]
                    if t == "stop":
                        raise PipeClosed("the driver stopped this endpoint")
                    return value
            self._pump(reader, alive)

    def _pump(self, reader: _Reader | None, alive) -> None:
        """Wait until some pipe can be read or written, then read and write what is ready."""
        if reader is not None:
            reader.drain()
            if reader.messages:
                return
        writing = [fd for fd, q in self.pending.items() if q]
        ready_r, ready_w, _ = select.select(list(self.by_fd), writing, [], 1.0)
        if not ready_r and not ready_w and alive is not None:
            alive()
        for fd in ready_w:
            self._write(fd)
        for fd in ready_r:
            self.by_fd[fd].drain()

    def close(self) -> None:
        for fd in list(self.by_fd) + list(self.writes.values()):
            try:
                os.close(fd)
            except OSError as e:               # already closed
                if e.errno != errno.EBADF:
                    raise
        self.by_fd, self.writes = {}, {}
