#!/usr/bin/env bash
# Coder metadata "Last poll": ok while the runner looked for jobs in the last 30 seconds, else stale.
set -euo pipefail
curl -fsS "http://127.0.0.1:${PORT:-8080}/healthz" | jq -r 'if .last_poll_age_ms < 30000 then "ok" else "stale (\(.last_poll_age_ms / 1000 | floor)s)" end'
