#!/usr/bin/env bash
# Sets up and starts HitokotoGPT: creates .venv, installs requirements.txt, then
# hitokoto/launcher.py prepares a token and (without REDIS_URL) a private Redis, prints a
# summary and runs web + worker under honcho. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m hitokoto.launcher "$@"
