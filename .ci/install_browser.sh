#!/usr/bin/env bash
# Install what tests/test_browser.py needs: Debian's chromium (with fonts) and Playwright's Python
# package. Playwright drives the system browser (/usr/bin/chromium); never `playwright install`,
# which downloads a browser build. Idempotent: does nothing when both are already there.
# Usage: .ci/install_browser.sh [python]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${1:-${PYTHON:-}}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-liberation >/dev/null
fi

if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
  "$PYTHON" -m pip install -q "playwright>=1.40"
fi

echo "browser: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium missing'); playwright $("$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))')"
