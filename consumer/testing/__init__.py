"""Helpers shared by the test suite and the benchmarks: throw-away topics, consumer processes to kill and restart."""
