"""nix-job's benchmarks: each figure a ratio against a baseline measured in the same run.

Entry point ``./scripts/bench`` (``python -m bench.run``); results in ``bench/results.json``
and ``docs/benchmarks.md``. Not shipped with the action.
"""
