#!/usr/bin/env bash
# Coder metadata "Sessions": active sessions out of the runner's capacity, as N / capacity.
set -euo pipefail
curl -fsS "http://127.0.0.1:${PORT:-8080}/healthz" | jq -r '"\(.active_sessions) / \(.capacity)"'
