#!/usr/bin/env bash
# Added latency, frame in -> frame out, at N cameras: one `gbgate run` (RTSP merge_write 0s by
# default: per-frame writes) and one `gbgate latency` process that sends CAMERAS cameras of the
# tools/load.sh clip and plays PLAYERS of them over RTSP/TCP, matching frames by content. Prints
# p50/p99/max, gbgate's CPU and RSS.
#
#   CAMERAS=500 PLAYERS=50 tools/latency.sh
#
# Env: CAMERAS (500), PLAYERS (50), TRANSPORT (udp|tcp), MERGE (0s), WARMUP (5 s), WINDOW (20 s),
#      BIN (default: build release), EXTRA_TOML, LOAD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
CAMERAS=${CAMERAS:-500}
PLAYERS=${PLAYERS:-50}
TRANSPORT=${TRANSPORT:-udp}
MERGE=${MERGE:-0s}
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-20}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${BIN:-$TARGET/release/gbgate}
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
HZ=$(getconf CLK_TCK)
[[ -s $CLIP ]] || PHASES="" tools/load.sh
[[ $BIN != "$TARGET/release/gbgate" ]] || cargo build --release -q --bins
# shellcheck source=tools/lib.sh
source tools/lib.sh
# Every listener on port 0, read back from --ports-file (start_gbgate): no free-port race.
conf=$LOAD_DIR/latency.toml
write_load_config "$conf" "$MERGE"
start_gbgate "$BIN" "$conf" "$LOAD_DIR/latency-gbgate.log" || { echo "gbgate did not start: $LOAD_DIR/latency-gbgate.log" >&2; exit 1; }
gw=$GW_PID rtp=$RTP_PORT rtsp=$RTSP_PORT
trap 'kill $gw 2>/dev/null || true' EXIT
flag=()
[[ $TRANSPORT == tcp ]] && flag=(--tcp)
c0=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$gw/stat"); t0=$(date +%s.%N)
"$BIN" latency "$CLIP" --rtp "127.0.0.1:$rtp" --rtsp "127.0.0.1:$rtsp" "${flag[@]}" --cameras "$CAMERAS" \
    --players "$PLAYERS" --warmup "${WARMUP}s" --duration "${WINDOW}s" || true
c1=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$gw/stat"); t1=$(date +%s.%N)
awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$HZ" -v rss="$(awk '/VmRSS/{print $2}' "/proc/$gw/status")" \
    -v l="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN{printf "gbgate CPU %.1f%% of one core over the run, RSS %.1f MB; load average %s\n", (b-a)/hz/(e-s)*100, rss/1024, l}'
