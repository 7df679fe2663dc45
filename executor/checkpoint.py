"""Checkpoints as a directory of numpy .npz files plus JSON metadata (never pickle).

Layout: `params.npz`, `optimizer.npz`, `states.npz` with positional keys (a0, a1, ...) and
`checkpoint.json` naming what each key holds, the step, the optimizer config and free-form
metadata. `save(directory, executor.state_dict())` / `executor.load_state_dict(load(directory))`.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from executor.errors import CheckpointError

FORMAT = "modelcut.checkpoint"
VERSION = 1


def _write(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, **{f"a{i}": np.asarray(a) for i, a in enumerate(arrays)})


def _read(path: Path, count: int) -> list[np.ndarray]:
    if not path.exists():
        raise CheckpointError(f"checkpoint: missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if sorted(data.files) != sorted(f"a{i}" for i in range(count)):
                raise CheckpointError(f"checkpoint: {path} holds {len(data.files)} arrays, "
                                      f"checkpoint.json lists {count}")
            arrays = [data[f"a{i}"] for i in range(count)]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({exc})") from None
    for i, array in enumerate(arrays):
        if array.dtype.kind not in "biuf":
            raise CheckpointError(f"checkpoint: {path}: array a{i} has dtype {array.dtype}, "
                                  "expected numbers")
    return arrays


# checkpoint.json's keys and what each must hold
INDEX_RULES = {
    "step": ("a non-negative integer", lambda v: type(v) is int and v >= 0),
    "optimizer_config": ("a JSON object or null", lambda v: v is None or type(v) is dict),
    "params": ("a list of names", lambda v: type(v) is list
               and all(type(x) is str for x in v)),
    "optimizer": ("a list of [parameter, slot] name pairs", lambda v: type(v) is list and all(
        type(x) is list and len(x) == 2 and all(type(y) is str for y in x) for x in v)),
    "states": ("a list of names", lambda v: type(v) is list and all(type(x) is str for x in v)),
    "metadata": ("a JSON object", lambda v: type(v) is dict),
}


def check_index(index, path: Path) -> None:
    """Raise CheckpointError naming the first key of checkpoint.json that is missing or wrong."""
    if not isinstance(index, dict):
        raise CheckpointError(f"checkpoint: {path} must hold a JSON object")
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} is not a {FORMAT} version {VERSION} file")
    for key, (what, ok) in INDEX_RULES.items():
        if key not in index:
            raise CheckpointError(f"checkpoint: {path} has no {key!r} (expected {what})")
        if not ok(index[key]):
            raise CheckpointError(f"checkpoint: {path}: {key!r} must be {what}")


def save(directory: str | Path, state: Mapping, metadata: Mapping | None = None) -> Path:
    """Write `state` (an executor's state_dict) into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = list(state["params"].items())
    slots = [(p, slot, value) for p, st in state.get("optimizer", {}).items()
             for slot, value in st.items()]
    states = list(state.get("states", {}).items())
    _write(directory / "params.npz", [v for _, v in params])
    _write(directory / "optimizer.npz", [v for _, _, v in slots])
    _write(directory / "states.npz", [v for _, v in states])
    index = {"format": FORMAT, "version": VERSION, "step": int(state.get("step", 0)),
             "optimizer_config": state.get("optimizer_config"), "params": [p for p, _ in params],
             "optimizer": [[p, slot] for p, slot, _ in slots], "states": [s for s, _ in states],
             "metadata": dict(metadata or {})}
    (directory / "checkpoint.json").write_text(json.dumps(index, indent=1))
    return directory


def load(directory: str | Path) -> dict:
    """Read a checkpoint written by `save` back into a state_dict (plus its "metadata")."""
    directory = Path(directory)
    meta_path = directory / "checkpoint.json"
    if not meta_path.exists():
        raise CheckpointError(f"checkpoint: missing file {meta_path}")
    try:
        index = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError, ...
        raise CheckpointError(f"checkpoint: {meta_path} is not valid JSON: {e}") from None
    check_index(index, meta_path)
    params = _read(directory / "params.npz", len(index["params"]))
    slots = _read(directory / "optimizer.npz", len(index["optimizer"]))
    states = _read(directory / "states.npz", len(index["states"]))
    optimizer: dict[str, dict[str, np.ndarray]] = {}
    for (p, slot), value in zip(index["optimizer"], slots):
        optimizer.setdefault(p, {})[slot] = value
    return {"params": dict(zip(index["params"], params)), "optimizer": optimizer,
            "states": dict(zip(index["states"], states)), "step": index["step"],
            "optimizer_config": index["optimizer_config"], "metadata": index["metadata"]}
