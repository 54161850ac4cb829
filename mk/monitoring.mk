# Monitoring: Prometheus rules and config checks, live evaluation, drift. See docs/monitoring.md.
PROMTOOL ?= promtool
MONITOR_IMAGES ?= $(shell $(PY) -c 'from catsdogs.contract import SHARED_PHOTOS; print(SHARED_PHOTOS)' 2>/dev/null)
MONITOR_SAMPLE ?= 200
MONITOR_ARGS ?=
DRIFT_ARGS ?=

.PHONY: validate-monitoring drift-rules monitor-evaluate drift feedback-report

validate-monitoring: $(STAMP) ## promtool check config/rules + rule unit tests; dashboard PromQL parses and uses exported metrics
	@command -v $(PROMTOOL) >/dev/null || { echo "promtool not found: apt-get install -y prometheus (Debian/Ubuntu)"; exit 1; }
	$(PROMTOOL) check config monitoring/prometheus.yml
	$(PROMTOOL) check rules monitoring/alerts.yml $(wildcard monitoring/generated/*.rules.yml)
	cd monitoring/tests && $(PROMTOOL) test rules alerts_test.yml
	$(PY) -m monitoring check-dashboard --promtool $(PROMTOOL)

drift-rules: $(STAMP) ## monitoring/generated/baseline.rules.yml: the drift baseline of artifacts/model (its model-meta.json) for Prometheus
	$(BIN)/dvc repro baseline-rules

monitor-evaluate: $(STAMP) ## live accuracy on MONITOR_IMAGES (sample MONITOR_SAMPLE) vs offline; exit 1 on a >5 pp drop
	$(PY) -m monitoring evaluate --images $(MONITOR_IMAGES) --sample $(MONITOR_SAMPLE) --run-dir $(SERVE_DIR) $(MONITOR_ARGS)

drift: $(STAMP) ## PSI of live labels/confidences (model_log.log) vs the test split; exit 1 above 0.25
	$(PY) -m monitoring drift --run-dir $(SERVE_DIR) $(DRIFT_ARGS)

feedback-report: $(STAMP) ## metrics of the last 24 h of labelled predictions (reports/monitoring/feedback.db)
	$(PY) -m monitoring feedback report --window 24h
