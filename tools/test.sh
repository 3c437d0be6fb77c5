#!/usr/bin/env bash
# Runs every check and test of gbgate. Installs what the tests need when it is missing
# (ffmpeg for ffprobe; Debian/Ubuntu packages), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests use: ffmpeg/ffprobe 5.1, GStreamer (rtspsrc), sipp (SIP), and a modern ffmpeg from the
# PyPI package imageio-ffmpeg (HEVC over Enhanced RTMP, which ffmpeg 5.1 cannot read).
pkgs=()
command -v ffprobe >/dev/null 2>&1 || pkgs+=(ffmpeg)
command -v sipp >/dev/null 2>&1 || pkgs+=(sip-tester)
command -v gst-launch-1.0 >/dev/null 2>&1 ||
  pkgs+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav)
# rtspclientsink (RTSP publishers in tests/rtsp_ingest.rs).
gst-inspect-1.0 rtspclientsink >/dev/null 2>&1 || pkgs+=(gstreamer1.0-rtsp)
[ -f /usr/share/zoneinfo/Asia/Shanghai ] || pkgs+=(tzdata)
# tests/rtsp_pull.rs: VLC's and GStreamer's RTSP servers.
command -v cvlc >/dev/null 2>&1 || pkgs+=(vlc-bin vlc-plugin-base)
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('GstRtp', '1.0')" \
  >/dev/null 2>&1 || pkgs+=(python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0)
# tests/console.rs: headless Chromium (the web console and its player).
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "== installing ${pkgs[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if ! python3 -c "import imageio_ffmpeg" >/dev/null 2>&1; then
  echo "== installing imageio-ffmpeg (pip)"
  python3 -m pip install -q imageio-ffmpeg
fi
# tests/whep.rs: aiortc, a WebRTC player we did not write, for the Debian python3 the tests run.
if ! /usr/bin/python3 -c "import aiortc" >/dev/null 2>&1; then
  echo "== installing aiortc (pip)"
  /usr/bin/python3 -m pip install -q aiortc 2>/dev/null || /usr/bin/python3 -m pip install -q --break-system-packages aiortc
fi
for tool in ffprobe sipp gst-launch-1.0; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after the install" >&2; exit 1; }
done
if [ ! -d ../shared/fixtures ] && [ -z "${GBGATE_SHARED:-}" ]; then
  echo "note: ../shared/fixtures is absent: tests that use it print 'skipped' and pass (with CI=true they fail)"
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
# clippy above already compiled the benches and examples; test what has tests.
echo "== cargo test --lib --bins --tests"
cargo test --lib --bins --tests
