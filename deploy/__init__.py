"""Zero-downtime model version swaps on a running TorchServe (`python -m deploy --help`).

deploy/archive.py   what a .mar is (model name, version, model-meta.json) and placing it in the store
deploy/versions.py  pure decisions: which versions to prune, which one a rollback goes back to, history
deploy/gates.py     the smoke test and golden-set accuracy gate (pure checks + the requests that feed them)
deploy/management.py the TorchServe management API calls (register, set-default, scale, unregister)
deploy/registry.py  MLflow registry: move the `champion` alias to the served model version
deploy/deployer.py  the deploy / rollback / status / scale procedures built from the above
"""
