#!/usr/bin/env bash
# Time to first frame from the GOP cache: one HTTP-FLV and one RTMP player, alternated, 5 times,
# joining the 2 Mbit/s 720p clip of tools/load.sh (run it once first). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
TARGET=${CARGO_TARGET_DIR:-target}; BIN=${BIN:-$TARGET/release/gbgate}; D=$TARGET/load
# Every listener on port 0, read back from --ports-file (start_gbgate): no free-port race.
write_fanout_config $D/ttff.toml 200ms
snd=""
start_gbgate "$BIN" $D/ttff.toml $D/ttff.log || { echo "gbgate did not start: $D/ttff.log" >&2; exit 1; }
gw=$GW_PID rtp=$RTP_PORT rtmp=$RTMP_PORT http=$HTTP_PORT
trap 'kill $gw $snd 2>/dev/null || true' EXIT
$BIN send $D/cam720p_2m_g711a.rtp --to 127.0.0.1:$rtp --ssrc 0100000001 --loop 100 --duration 60s >/dev/null & snd=$!
sleep 3
for i in 1 2 3 4 5; do
  for u in "http://127.0.0.1:$http/rtp/05F5E101.flv" "rtmp://127.0.0.1:$rtmp/rtp/05F5E101"; do
    out=$($BIN players "$u" --count 1 --duration 1s)
    echo "$u $(grep -o 'median [0-9.]* ms' <<<"$out" | head -1), $(grep -o 'keyframe for [0-9]* of [0-9]*' <<<"$out")"
  done
done
