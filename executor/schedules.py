"""Pipeline schedules live in partition/schedules.py (the SPEC section 4 simulation orders its
ops by them too); this alias keeps executor/plan.py's import until it names partition."""
from partition.schedules import make_schedule, validate  # noqa: F401
