"""One real local Ray instance for every Ray test of the session (starting Ray takes seconds)."""
import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, no dashboard, a 512 MiB object store (shared/RAY.md). The
    fault tests kill actors on purpose: the outcomes of calls the dead actors never ran are
    not errors of the tests, so Ray's "Unhandled error" log lines for them are off
    (RAY_IGNORE_UNHANDLED_ERRORS, the switch that log line names; read when one is dropped)."""
    pytest.importorskip("ray")
    from executor.ray_runtime import start_ray, stop_ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_IGNORE_UNHANDLED_ERRORS", "1")
        start_ray(num_cpus=2)
        import ray

        yield ray
        stop_ray()
