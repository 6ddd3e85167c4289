#!/usr/bin/env bash
# Coder metadata "Runner ID": the id this runner claims jobs under.
set -euo pipefail
curl -fsS "http://127.0.0.1:${PORT:-8080}/healthz" | jq -r '.runner_id'
