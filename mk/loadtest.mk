# Load tests: Locust against TorchServe as a quality gate; reports in reports/loadtest/<mode>/ (ignored).
# Each mode is Locust configuration, loadtest/<mode>.conf (users, duration, thresholds); each target starts
# TorchServe from $(SERVE_DIR) when none runs there (and stops it after); the exit status is Locust's.
# No target but loadtest-docs writes a tracked file.
#   make loadtest LOADTEST_ARGS="-u 32 -t 120s"                  # any Locust/locustfile option overrides the file
#   make loadtest SERVE_DIR=/tmp/lt LOADTEST_ARGS=--free-ports     # private instance, free ports
LOADTEST_ARGS ?=
LOADTEST_MAR = test -f $(MAR) || $(PY) -m serving ready -q --run-dir $(SERVE_DIR) || $(MAKE) archive
LOADTEST_MODES := run ramp soak fault

.PHONY: loadtest loadtest-ramp loadtest-soak loadtest-fault loadtest-docs

loadtest: $(STAMP) ## Locust steady load (loadtest/run.conf); gate: errors, p95, throughput, accuracy vs offline
	@$(LOADTEST_MAR)
	$(PY) -m loadtest run --run-dir $(SERVE_DIR) $(LOADTEST_ARGS)

loadtest-ramp: $(STAMP) ## Locust step ramp (loadtest/ramp.conf): the knee
	@$(LOADTEST_MAR)
	$(PY) -m loadtest ramp --run-dir $(SERVE_DIR) $(LOADTEST_ARGS)

loadtest-soak: $(STAMP) ## Locust soak (loadtest/soak.conf): worker RSS growth and restarts
	@$(LOADTEST_MAR)
	$(PY) -m loadtest soak --run-dir $(SERVE_DIR) $(LOADTEST_ARGS)

loadtest-fault: $(STAMP) ## kill a TorchServe worker under load (loadtest/fault.conf); gate: it recovers in time
	@$(LOADTEST_MAR)
	$(PY) -m loadtest fault --run-dir $(SERVE_DIR) $(LOADTEST_ARGS)

loadtest-docs: $(STAMP) ## write docs/performance.md's load-test blocks from the runs in reports/loadtest/ (explicit only)
	@for mode in $(LOADTEST_MODES); do \
		if [ -f reports/loadtest/$$mode/report.json ]; then $(PY) -m loadtest docs $$mode || exit 1; \
		else echo "loadtest-docs: no reports/loadtest/$$mode/report.json (run make loadtest-$$mode first); block kept"; fi; \
	done
