"""Skip marks for tests that run METIS or Mt-KaHyPar (the optional `peers` extra), so the
suite passes on a machine without them and says why those tests did not run."""
from importlib.util import find_spec

import pytest

PACKAGE = {"metis": "pymetis", "mtkahypar": "mtkahypar"}


def needs(*algorithms: str):
    """A skip mark for a test that runs these peer algorithms ("metis", "mtkahypar")."""
    missing = [PACKAGE[a] for a in algorithms if find_spec(PACKAGE[a]) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)} "
                              "(the peers extra: pip install -e \".[peers]\")")


def algorithm(name: str, value=None):
    """A pytest.param of `value` (default `name`) that skips when peer algorithm `name`'s
    package is missing; other names pass through unmarked."""
    value = name if value is None else value
    return pytest.param(value, marks=needs(name), id=name) if name in PACKAGE else value
