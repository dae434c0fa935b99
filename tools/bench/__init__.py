"""Benchmarks (`gasguard bench ...`): each prints figures; timing goals live here, not in the tests."""
