"""Deterministic, seeded whole-engine simulation (see ``tests/sim/sim.py``)."""
