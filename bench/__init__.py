"""Benchmarks of the whole path, each against a baseline measured in the same run.

Run with ``./dev bench``; it prints a table and writes it to BENCHMARKS.md.
"""
