"""One real local Ray instance for every Ray test of the session (starting Ray takes seconds)."""
import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, no dashboard, a 512 MiB object store (shared/RAY.md)."""
    pytest.importorskip("ray")
    from executor.ray_runtime import start_ray, stop_ray

    start_ray(num_cpus=2)
    import ray

    yield ray
    stop_ray()
