"""Quantities with units live in partition/units.py (the cluster validator reads them); this
name stays for modelcut's reports and commands."""
from partition.units import *  # noqa: F401,F403
from partition.units import __all__  # noqa: F401
