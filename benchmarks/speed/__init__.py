"""Speed benchmark (issue 4): `.venv/bin/python -m benchmarks.speed [--quick]` writes results.md + results.json."""
