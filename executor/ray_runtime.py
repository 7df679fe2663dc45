"""Starting and stopping Ray for modelcut: quiet, small, local by default (shared/RAY.md).

`start_ray()` starts a local Ray instance (dashboard off, usage stats off, a modest object
store, worker logs kept out of the driver's output, session files under the system temp
directory, worker processes at normal priority) or joins an existing cluster with `address=`. It also sets the environment that
Ray's Compiled Graphs read at import time (a short teardown timeout, since teardown can hang
with large payloads). `stop_ray()` shuts down only an instance that `start_ray()` started.
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
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_CGRAPH_teardown_timeout": "3",
    "RAY_worker_niceness": "0",
}
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2

_started_here = False


def configure_environment() -> None:
    """Set the Ray environment variables above unless the user already set them."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def temp_dir() -> str:
    """Ray's session directory: short (Unix socket paths are limited to ~107 characters) and
    under the system temp directory."""
    path = Path(tempfile.gettempdir()) / "modelcut-ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


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
                 logging_level=logging.WARNING, _temp_dir=temp_dir())
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
