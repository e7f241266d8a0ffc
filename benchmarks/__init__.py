"""Benchmarks of the gateway: overhead, many streams, balancing quality, metering cost.

Run `python -m benchmarks.run [--quick]`; it writes `benchmarks/RESULTS.md`. Not part of
the pytest suite (tests/test_benchmarks_smoke.py only keeps the load generator alive).
"""
