# corral: `make run` sets everything up and starts the main job; `make test` sets up and runs every test.
# Both are idempotent: each step is skipped when what it makes is already there.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := bubblewrap socat git curl iproute2 util-linux hyperfine libseccomp2 procps jq tmux wrk \
	docker.io runsc debootstrap runc podman catatonit
# The Claude Code CLI that jobs run, pinned: tool names and startup calls change between releases.
CLAUDE_VERSION := 2.1.197
CLAUDE_DIR := tools/claude-code
CLAUDE := $(CLAUDE_DIR)/node_modules/.bin/claude

.PHONY: setup system venv claude engine srt run test test-unit test-security lint bench clean

setup: system venv claude

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m compileall -q src
	touch $@

claude:
	@$(CLAUDE) --version 2>/dev/null | grep -q '^$(CLAUDE_VERSION) ' || \
		npm install --prefix $(CLAUDE_DIR) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_VERSION)
	@$(CLAUDE) --version | grep -q '^$(CLAUDE_VERSION) ' || { echo "the Claude Code CLI $(CLAUDE_VERSION) did not install into $(CLAUDE_DIR)"; exit 1; }

# The container engines of the tests and benchmarks: a private dockerd, podman (runc, never crun: runc is
# listed so that apt never picks crun for podman; catatonit is its --init), and corral's sandbox image in both.
engine: system
	bash scripts/engine.sh image

run: setup
	$(VENV)/bin/corral doctor
	@echo "corral serve: the runner service on http://127.0.0.1:8080 (Ctrl-C drains and stops it)."
	@echo "  submit a first job: curl -s -X POST http://127.0.0.1:8080/v1/jobs -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"prompt\": \"Add a README\", \"repo\": \"https://github.com/you/project\"}'"
	@echo "  then: $(VENV)/bin/corral jobs list (with CORRAL_URL=http://127.0.0.1:8080), docs/api.md has the rest"
	$(VENV)/bin/corral serve --host 127.0.0.1 --port 8080

test: setup engine
	$(VENV)/bin/pytest

test-unit: setup
	$(VENV)/bin/pytest tests/unit

test-security: setup engine
	$(VENV)/bin/pytest tests/security

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# Anthropic's sandbox runtime, pinned: the baseline of benchmarks/srt.py (it also needs ripgrep).
SRT_VERSION := 0.0.78

srt: system
	@dpkg -s ripgrep >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends ripgrep; }
	@npm ls --prefix tools --depth 0 @anthropic-ai/sandbox-runtime 2>/dev/null | grep -q '@$(SRT_VERSION)$$' || \
		npm install --prefix tools --no-audit --no-fund --loglevel=error @anthropic-ai/sandbox-runtime@$(SRT_VERSION)

bench: setup engine srt
	$(PY) -m compileall -q src
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
