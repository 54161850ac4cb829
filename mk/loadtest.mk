# Load tests: Locust against TorchServe as a quality gate; reports in $(LOADTEST_OUT)/<mode>/ (ignored).
# Each mode is Locust configuration, loadtest/<mode>.conf (users, duration, thresholds), run by Locust itself;
# each target starts TorchServe from $(SERVE_DIR) (`make serve`) when none answers there and stops it after,
# then `python -m loadtest.report <mode>` prints the summary (the ramp's knee, the worker chart). The exit
# status is Locust's (0: every threshold met, 3: one missed). No target but loadtest-docs writes a tracked file.
#   make loadtest LOADTEST_ARGS="-u 32 -t 120s"                 # any Locust/locustfile option overrides the file
#   make loadtest SERVE_DIR=/tmp/lt SERVE_ARGS=--free-ports       # private instance, free ports
LOADTEST_ARGS ?=
LOADTEST_OUT ?= reports/loadtest
LOADTEST_MAR = test -f $(MAR) || $(PY) -m serving ready -q --run-dir $(SERVE_DIR) || $(MAKE) archive
LOADTEST_MODES := run ramp soak fault

.PHONY: loadtest loadtest-ramp loadtest-soak loadtest-fault loadtest-docs

# $(1): the mode. The trap stops a TorchServe this recipe started, also when Locust fails or is interrupted.
define locust_gate
	@$(LOADTEST_MAR)
	@started=; trap '[ -z "$$started" ] || $(MAKE) --no-print-directory stop' EXIT; \
	if ! $(PY) -m serving ready -q --run-dir $(SERVE_DIR) 2>/dev/null; then \
		$(MAKE) --no-print-directory serve SERVE_ARGS="--timeout 240 $(SERVE_ARGS)" || exit 2; started=1; fi; \
	out=$(LOADTEST_OUT)/$(1); mkdir -p $$out; rm -f $$out/locust_summary.json; \
	$(PY) -m locust --config loadtest/$(1).conf --run-dir $(SERVE_DIR) --csv $$out/locust --html $$out/report.html \
		--json-file $$out/locust $(LOADTEST_ARGS); code=$$?; \
	$(PY) -m loadtest.report $(1) --out $$out || [ $$code -ne 0 ] || code=2; exit $$code
endef

loadtest: $(STAMP) ## Locust steady load (loadtest/run.conf); gate: errors, p95, throughput, accuracy vs offline
	$(call locust_gate,run)

loadtest-ramp: $(STAMP) ## Locust step ramp (loadtest/ramp.conf): the knee
	$(call locust_gate,ramp)

loadtest-soak: $(STAMP) ## Locust soak (loadtest/soak.conf): worker RSS growth and restarts
	$(call locust_gate,soak)

loadtest-fault: $(STAMP) ## kill a TorchServe worker under load (loadtest/fault.conf); gate: it recovers in time
	$(call locust_gate,fault)

loadtest-docs: $(STAMP) ## write docs/performance.md's load-test blocks from the runs in reports/loadtest/ (explicit only)
	@for mode in $(LOADTEST_MODES); do \
		if [ -f reports/loadtest/$$mode/locust_summary.json ]; then $(PY) -m loadtest.report $$mode --docs || exit 1; \
		else echo "loadtest-docs: no reports/loadtest/$$mode/locust_summary.json (run make loadtest-$$mode first); block kept"; fi; \
	done
