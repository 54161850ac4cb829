# Load tests (issue 5): Locust against TorchServe as a quality gate; reports in reports/loadtest/<mode>/.
# Each target starts TorchServe from $(LOADTEST_RUN_DIR) when none runs there (and stops it after);
# the exit status is Locust's, set by the thresholds in loadtest/thresholds.yaml.
#   make loadtest LOADTEST_ARGS="--users 32 --duration 120"
#   make loadtest LOADTEST_RUN_DIR=/tmp/lt LOADTEST_ARGS=--free-ports     # private instance, free ports
LOADTEST_RUN_DIR ?= $(or $(SERVE_DIR),.serve)
LOADTEST_ARGS ?=
LOADTEST_MAR = test -f $(MAR) || $(PY) -m serving ready -q --run-dir $(LOADTEST_RUN_DIR) || $(MAKE) archive

.PHONY: loadtest loadtest-ramp loadtest-soak loadtest-fault

loadtest: $(STAMP) ## Locust steady load (16 users, 60 s); gate: errors, p95, throughput
	@$(LOADTEST_MAR)
	$(PY) -m loadtest run --run-dir $(LOADTEST_RUN_DIR) $(LOADTEST_ARGS)

loadtest-ramp: $(STAMP) ## Locust step ramp (2 more users every 15 s up to 24): the knee
	@$(LOADTEST_MAR)
	$(PY) -m loadtest ramp --run-dir $(LOADTEST_RUN_DIR) $(LOADTEST_ARGS)

loadtest-soak: $(STAMP) ## Locust 10-min soak: worker RSS growth and restarts
	@$(LOADTEST_MAR)
	$(PY) -m loadtest soak --run-dir $(LOADTEST_RUN_DIR) $(LOADTEST_ARGS)

loadtest-fault: $(STAMP) ## kill a TorchServe worker under load; gate: it recovers in time
	@$(LOADTEST_MAR)
	$(PY) -m loadtest fault --run-dir $(LOADTEST_RUN_DIR) $(LOADTEST_ARGS)
