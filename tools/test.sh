#!/usr/bin/env bash
# Runs every check and test of gbgate. Installs what the tests need when it is missing
# (ffmpeg for ffprobe; Debian/Ubuntu packages), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffprobe >/dev/null 2>&1; then
  echo "== installing ffmpeg (ffprobe checks probe's counts)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
if [ ! -d ../shared/fixtures ] && [ -z "${GBGATE_SHARED:-}" ]; then
  echo "note: ../shared/fixtures is absent: tests that use it print 'skipped' and pass"
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
# clippy above already compiled the benches and examples; test what has tests.
echo "== cargo test --lib --bins --tests"
cargo test --lib --bins --tests
