"""Benchmarks B1-B5 (issue 5): ``python -m bench.run``; ``make bench`` writes docs/benchmarks.md.

Speed and memory are measured here, never by timed unit tests. Every
comparison is a ratio of two arms measured side by side in one invocation,
in alternating order, repeated; ``tests/bench/test_bench_smoke.py`` runs tiny
versions so the harness keeps working.
"""
