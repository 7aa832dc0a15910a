"""Probes: each module lists the checks it reads (`probes()`), one Probe (health/probes/base.py) per
path, endpoint or queue; health/cycle.py reads them all at once and records each reading."""
