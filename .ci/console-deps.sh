#!/usr/bin/env bash
# What the console's browser test (tests/console_browser.rs) needs: Debian's Chromium and
# playwright-core from tests/e2e/package-lock.json (no browser download). Idempotent: installs
# only what is missing, so it is cheap to run on every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -f tests/e2e/node_modules/playwright-core/package.json ]; then
  echo "== npm ci --prefix tests/e2e"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/e2e --no-audit --no-fund
fi

echo "console test dependencies: $(/usr/bin/chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('./tests/e2e/node_modules/playwright-core/package.json').version")"
