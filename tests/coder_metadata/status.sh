#!/usr/bin/env bash
# Coder metadata "Runner": ok, or draining while the runner finishes its jobs before it exits.
set -euo pipefail
curl -fsS "http://127.0.0.1:${PORT:-8080}/healthz" | jq -r 'if .draining then "draining" else .status end'
