"""Starting and stopping Ray for modelcut: quiet, small, local by default (shared/RAY.md).

`start_ray()` starts a local Ray instance (dashboard off, usage stats off, a modest object
store, worker logs kept out of the driver's output, session files under the system temp
directory via Ray's `RAY_TMPDIR`, worker processes at normal priority) or joins an existing
cluster with `address=`. `stop_ray()` shuts down only an instance that `start_ray()` started.

The executor no longer uses Ray's Compiled Graphs (the named pipes are faster here).
`skip_torch_in_channels` and `patient_channel_reads` below remain only for
modelcut/calibration.py's compiled-graph link probe and go with it (issue 15, item 3): they
are the last private Ray names under executor/.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Read by Ray when it is imported or initialized, so they are set before either happens.
# Ray starts worker processes at nice 15 by default; the actors do the training's compute, so
# at that priority any other busy process on the machine starves them (measured here: two
# pipeline stages got 0.46 of a core each next to one nice-0 process): run them at nice 0.
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_CGRAPH_teardown_timeout": "3",
    "RAY_worker_niceness": "0",
}
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2

_started_here = False


def configure_environment() -> None:
    """Set the Ray environment variables above (and `RAY_TMPDIR`: `temp_dir()`) unless the
    user already set them."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_TMPDIR", temp_dir())


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
    env = {"PYTHONPATH": path}
    if blas_threads is not None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(blas_threads)
    return env


def start_ray(address: str | None = None, num_cpus: int | None = None,
              object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
              include_dashboard: bool = False, log_to_driver: bool = False) -> bool:
    """Start a local Ray instance, or join the cluster at `address` ("auto" or host:port).

    Returns True if this call started or joined Ray, False if Ray was already initialized in
    this process (then nothing changes and `stop_ray` will leave it running)."""
    global _started_here
    configure_environment()
    import ray

    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard,
                 object_store_memory=object_store_memory, log_to_driver=log_to_driver,
                 logging_level=logging.WARNING)
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


def skip_torch_in_channels() -> None:
    """Tell Compiled-Graph channels in this process that torch is unavailable.

    On first use they import torch when it is installed (to handle GPU tensors): 2-3 s and
    ~300 MB per process. modelcut sends numpy arrays only. Measured here: the first execution
    of a 2-actor graph drops from ~3 s to ~10 ms. (A private attribute of Ray 2.x; left alone
    when it does not exist.)"""
    try:
        from ray.experimental.channel.common import ChannelContext
    except ImportError:
        return
    context = ChannelContext.get_current()
    if hasattr(context, "_torch_available"):
        context._torch_available = False


# Channel reads: spin this long first (Ray's own wait), then sleep between polls, doubling the
# pause from PAUSE_SECONDS up to MAX_PAUSE_SECONDS.
SPIN_SECONDS = 1e-3
PAUSE_SECONDS = 2e-5
MAX_PAUSE_SECONDS = 5e-4


def patient_channel_reads() -> None:
    """Make Compiled-Graph channel reads in this process sleep while they wait.

    Ray's shared-memory reader busy-waits (a sched_yield loop) until the writer seals the
    next value: measured here, an idle compiled-graph actor takes 0.3-0.4 of a core and the
    driver waiting for a step 0.33, taken from the actors computing on a 2-core machine. The
    wrapped read spins for SPIN_SECONDS as before, then polls (a zero-timeout read, which
    Ray retries the same way after its own iteration timeouts) with short sleeps in between.
    Idempotent; left alone when Ray has no such channel class."""
    try:
        from ray.exceptions import RayChannelTimeoutError
        from ray.experimental.channel.shared_memory_channel import Channel
    except ImportError:
        return
    if getattr(Channel.read, "patient", False):
        return
    spin_read = Channel.read

    def read(self, timeout: float | None = None):
        endless = timeout is None or timeout < 0
        if not endless and timeout <= SPIN_SECONDS:
            return spin_read(self, timeout)
        deadline = None if endless else time.monotonic() + timeout
        try:
            return spin_read(self, SPIN_SECONDS)
        except RayChannelTimeoutError:
            pass
        pause = PAUSE_SECONDS
        while True:
            time.sleep(pause)
            try:
                return spin_read(self, 0)
            except RayChannelTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            pause = min(2 * pause, MAX_PAUSE_SECONDS)

    read.patient = True
    Channel.read = read
