"""Benchmarks and load generators for ringcache (not tests; see ``loadtest/README.md``).

Each script runs from the repository root as ``python -m loadtest.<name>`` and writes its
results to ``loadtest/results/``.
"""
