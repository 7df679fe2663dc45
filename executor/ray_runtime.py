"""Starting and stopping Ray for modelcut: quiet, small, local by default (shared/RAY.md).

`start_ray()` starts a local Ray instance (dashboard off, usage stats off, a modest object
store, worker logs kept out of the driver's output, session files under the system temp
directory via Ray's `RAY_TMPDIR`, worker processes at normal priority) or joins an existing
cluster with `address=`. `stop_ray()` shuts down only an instance that `start_ray()` started.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Read by Ray when it is imported or initialized, so they are set before either happens.
# Ray starts worker processes at nice 15 by default; the actors do the training's compute, so
# at that priority any other busy process on the machine starves them (measured here: two
# pipeline stages got 0.46 of a core each next to one nice-0 process): run them at nice 0.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                   "RAY_worker_niceness": "0"}
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2

_started_here = False


def temp_dir() -> str:
    """Ray's session directory: short (Unix socket paths are limited to ~107 characters) and
    under the system temp directory."""
    path = Path(tempfile.gettempdir()) / "modelcut-ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def worker_env(blas_threads: int | None = None) -> dict[str, str]:
    """Environment for actor processes: this checkout first on PYTHONPATH (so workers import
    the same modelcut as the driver) and, when given, the BLAS thread count."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                     if p and p != root])
    threads = {} if blas_threads is None else dict.fromkeys(
        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(blas_threads))
    return {"PYTHONPATH": path, **threads}


def start_ray(address: str | None = None, num_cpus: int | None = None,
              object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
              include_dashboard: bool = False, log_to_driver: bool = False) -> bool:
    """Start a local Ray instance, or join the cluster at `address` ("auto" or host:port).

    Returns True if this call started or joined Ray, False if Ray was already initialized in
    this process (then nothing changes and `stop_ray` will leave it running)."""
    global _started_here
    for key, value in RAY_ENVIRONMENT.items():       # unless the user set them
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_TMPDIR", temp_dir())
    import ray

    if ray.is_initialized():
        return False
    local = {} if address is not None else dict(
        num_cpus=num_cpus, include_dashboard=include_dashboard,
        object_store_memory=object_store_memory)
    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING, **local)
    _started_here = True
    log.info("ray started (%s): %s", address or "local", ray.cluster_resources())
    return True


def stop_ray() -> None:
    """Shut down Ray if `start_ray` started it in this process."""
    global _started_here
    if not _started_here:
        return
    import ray

    ray.shutdown()
    _started_here = False

