"""Every example runs as `python examples/NAME.py` and prints its result."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py") if p.name != "compiled.py")


def test_every_example_is_listed_in_the_readmes():
    listed = (ROOT / "examples" / "README.md").read_text()
    top = (ROOT / "README.md").read_text().split("## Examples", 1)[1]
    for name in SCRIPTS:
        assert name in listed and name in top, f"{name} is missing from a README"


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_as_a_script(script):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, f"examples/{script}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
