#!/usr/bin/env bash
# Time to first frame from the GOP cache: one HTTP-FLV and one RTMP player, alternated, 5 times,
# joining the 2 Mbit/s 720p clip of tools/load.sh (run it once first). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}; BIN=${BIN:-$TARGET/release/gbgate}; D=$TARGET/load
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rtp=$(port); api=$(port); rtsp=$(port); rtmp=$(port); http=$(port)
cat > $D/ttff.toml <<TOML
[rtp]
listen = "127.0.0.1:$rtp"
[api]
listen = "127.0.0.1:$api"
[rtsp]
listen = "127.0.0.1:$rtsp"
[rtmp]
listen = "127.0.0.1:$rtmp"
[http]
listen = "127.0.0.1:$http"
TOML
$BIN run -c $D/ttff.toml 2> $D/ttff.log & gw=$!
trap 'kill $gw $snd 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$api/healthz" >/dev/null && break; sleep 0.1; done
$BIN send $D/cam720p_2m_g711a.rtp --to 127.0.0.1:$rtp --ssrc 0100000001 --loop 100 --duration 60s >/dev/null & snd=$!
sleep 3
for i in 1 2 3 4 5; do
  for u in "http://127.0.0.1:$http/rtp/05F5E101.flv" "rtmp://127.0.0.1:$rtmp/rtp/05F5E101"; do
    out=$($BIN players "$u" --count 1 --duration 1s)
    echo "$u $(grep -o 'median [0-9.]* ms' <<<"$out" | head -1), $(grep -o 'keyframe for [0-9]* of [0-9]*' <<<"$out")"
  done
done
