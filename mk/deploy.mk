# Deploy: swap model versions on a running TorchServe with gates and instant rollback.
# Against the server of `make serve` (.serve/serve.json), another run dir (DEPLOY_RUN_DIR=...), or
# explicit URLs from the environment (CATSDOGS_MANAGEMENT_URL, CATSDOGS_INFERENCE_URL,
# CATSDOGS_KEY_FILE, CATSDOGS_MODEL_STORE). See docs/deploy-versions.md.
DEPLOY_RUN_DIR ?= $(SERVE_DIR)
DEPLOY_ARGS ?=
# What the last `make deploy` changed (switched / unchanged / rejected / failed): rollback-if-switched reads it.
DEPLOY_RESULT ?= reports/deploy-result.json
# Server/registry options for rollbacks (the deploy gates' DEPLOY_ARGS mean nothing to `rollback`).
ROLLBACK_ARGS ?=
SCALE_VERSION ?=
SCALE_MIN ?= 1
SCALE_MAX ?= $(SCALE_MIN)

.PHONY: deploy rollback rollback-if-switched deploy-status scale

deploy: $(STAMP) ## gate $(MAR) as a new version and make it the default (DEPLOY_ARGS="--min-accuracy 0.9 ...")
	$(PY) -m deploy deploy $(MAR) --run-dir $(DEPLOY_RUN_DIR) --result $(DEPLOY_RESULT) $(DEPLOY_ARGS)

rollback: $(STAMP) ## make the previous version the default again (DEPLOY_ARGS="--to VERSION")
	$(PY) -m deploy rollback --run-dir $(DEPLOY_RUN_DIR) $(DEPLOY_ARGS)

rollback-if-switched: $(STAMP) ## undo the default switch of the last `make deploy` only ($(DEPLOY_RESULT) says switched)
	$(PY) -m deploy rollback --run-dir $(DEPLOY_RUN_DIR) --if-switched $(DEPLOY_RESULT) $(ROLLBACK_ARGS)

deploy-status: $(STAMP) ## registered versions, default, workers, per-version smoke check
	$(PY) -m deploy status --run-dir $(DEPLOY_RUN_DIR) $(DEPLOY_ARGS)

scale: $(STAMP) ## set workers of a version: make scale SCALE_MIN=2 [SCALE_MAX=4] [SCALE_VERSION=v]
	$(PY) -m deploy scale --run-dir $(DEPLOY_RUN_DIR) --min $(SCALE_MIN) --max $(SCALE_MAX) \
		$(if $(SCALE_VERSION),--version $(SCALE_VERSION)) $(DEPLOY_ARGS)
