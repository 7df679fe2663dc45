"""How a device's Send and Recv steps move tensors: one small interface for every path.

A DeviceWorker runs a block's steps in order and calls its transport at each Send and Recv,
with the step's TransferKey (executor/program.py). `arrival` carries an emulated device's
virtual arrival time (executor/emulate.py) and is None otherwise.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np

from executor.errors import ExecutorError
from executor.program import TransferKey


class Transport(Protocol):
    """Moves tensors between devices: `send` never waits for the receiver; `receive` waits
    until the tensor is there."""

    def send(self, key: TransferKey, value: np.ndarray, arrival: float | None = None) -> None:
        ...

    def receive(self, key: TransferKey) -> tuple[np.ndarray, float | None]:
        ...


class Mailbox:
    """In-process transport: tensors wait in a dict until their receive (the local executor
    runs blocks in the plan's global order, so every receive finds its tensor)."""

    def __init__(self, k: int):
        self.box: dict[TransferKey, tuple[np.ndarray, float | None]] = {}
        self.link_bytes = np.zeros((k, k), dtype=np.int64)

    def send(self, key: TransferKey, value: np.ndarray, arrival: float | None = None) -> None:
        self.box[key] = (value, arrival)
        self.link_bytes[key.source, key.target] += value.nbytes

    def receive(self, key: TransferKey) -> tuple[np.ndarray, float | None]:
        try:
            return self.box.pop(key)
        except KeyError:
            raise ExecutorError(f"device {key.target}: tensor {key.tensor!r} (micro-batch "
                                f"{key.micro_batch}) from device {key.source} was not "
                                "delivered") from None


class CallTransport(Mailbox):
    """One actor call's transport (Ray's plain path): a Mailbox holding the tensors that came
    with the call (arrays, or (array, arrival) when emulated); its Send steps are collected
    the same way (the call's returns, one packet per target device), bytes counted per target."""

    def __init__(self, received: Mapping[TransferKey, np.ndarray], k: int):
        super().__init__(k)
        self.box = {key: v if isinstance(v, tuple) else (v, None) for key, v in received.items()}
        self.sent: dict[TransferKey, np.ndarray] = {}
        self.sent_bytes = np.zeros(k, dtype=np.int64)

    def send(self, key: TransferKey, value: np.ndarray, arrival: float | None = None) -> None:
        self.sent[key] = value if arrival is None else (value, arrival)
        self.sent_bytes[key.target] += value.nbytes

    def packet(self, target: int) -> dict:
        """What the call sent to device `target`, by TransferKey as a plain tuple (equal to
        the key and pickled ~10x faster than the NamedTuple, whose class is looked up)."""
        return {tuple(key): value for key, value in self.sent.items() if key.target == target}
