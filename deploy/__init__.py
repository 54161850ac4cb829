"""Zero-downtime model version swaps on a running TorchServe (`python -m deploy --help`).

archive.py (what a .mar is), versions.py (prune / rollback decisions, history), gates.py (smoke test, golden
set), management.py (TorchServe management API), registry.py (MLflow `champion`), deployer.py (the procedures).
"""
