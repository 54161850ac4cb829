# Serving: build the .mar, run TorchServe in the background, check readiness, benchmark.
SERVE_ARGS ?=

.PHONY: mar serve stop ready token benchmark-serving benchmark-engines

mar: archive ## alias of `make archive`: $(MAR) (last DVC stage)

serve: $(STAMP) ## start TorchServe serving $(MAR) in the background (SERVE_ARGS: e.g. ports); waits for READY workers
	@test -f $(MAR) || $(MAKE) archive
	$(PY) -m serving start --run-dir $(SERVE_DIR) $(SERVE_ARGS)

stop: $(STAMP) ## stop the TorchServe started by `make serve`
	$(PY) -m serving stop --run-dir $(SERVE_DIR)

ready: $(STAMP) ## exit 0 when /ping is Healthy and the model has READY workers
	$(PY) -m serving ready --run-dir $(SERVE_DIR)

token: $(STAMP) ## print the inference key for `Authorization: Bearer ...`
	@$(PY) -m serving token --run-dir $(SERVE_DIR)

benchmark-serving: $(STAMP) ## wrk: TorchServe vs in-process at concurrency 1/4/16, and a deploy + rollback under load; writes docs/performance.md section
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk (Debian package)"; exit 1; }
	@case '$(BENCH_ARGS)' in *--model-dir*) ;; *) test -f artifacts/model/model.pt || $(MAKE) pipeline;; esac
	$(PY) -m benchmarks.serving $(BENCH_ARGS)

benchmark-engines: $(STAMP) ## TorchScript (plain, optimised, int8), OpenVINO f32/bf16/int8, ONNX Runtime, AOTInductor: speed and test accuracy in one run; writes docs/engines.md block
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	@case '$(BENCH_ARGS)' in *--model-dir*) ;; *) test -f artifacts/model/model.pt || $(MAKE) pipeline;; esac
	$(PY) -m benchmarks.engines $(BENCH_ARGS)
