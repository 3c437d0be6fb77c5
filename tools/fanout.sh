#!/usr/bin/env bash
# Fan-out: one 2 Mbit/s 720p H.264 + G.711A camera to N RTSP (TCP), RTMP or HTTP-FLV players on loopback.
# Prints gbgate's CPU (% of one core) and RSS over the players' window, the video frames each
# player got, sequence gaps (RTSP) or timestamp regressions (RTMP), and the time from PLAY to
# the first video packet (RTMP: to the first keyframe).
# Usage: PROTO=rtsp|rtmp|http-flv PLAYERS="100 300" WINDOW=20 [MERGE=200ms] [BIN=...] tools/fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
PLAYERS=${PLAYERS:-"100 300"}
WINDOW=${WINDOW:-20}
PROTO=${PROTO:-rtsp}
MERGE=${MERGE:-200ms}   # [rtsp]/[rtmp] merge_write (the default)
case $PROTO in rtsp|rtmp|http-flv) ;; *) echo "PROTO must be rtsp, rtmp or http-flv" >&2; exit 2 ;; esac
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${BIN:-$TARGET/release/gbgate}   # BIN=/path/to/other/gbgate compares builds in one run
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
HZ=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

[[ -s $CLIP ]] || PHASES="" tools/load.sh   # makes the clip (and builds) without a load phase
[[ $BIN != "$TARGET/release/gbgate" ]] || cargo build --release -q --bins

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

for n in $PLAYERS; do
    cfg=$LOAD_DIR/fanout.toml
    write_fanout_config "$cfg" "$MERGE"
    start_gbgate "$BIN" "$cfg" "$LOAD_DIR/fanout-$PROTO-$n.log" || { echo "gbgate did not start: $LOAD_DIR/fanout-$PROTO-$n.log" >&2; exit 1; }
    gw=$GW_PID; PIDS+=("$gw")
    rtp=$RTP_PORT rtsp=$RTSP_PORT rtmp=$RTMP_PORT http=$HTTP_PORT
    "$BIN" send "$CLIP" --to "127.0.0.1:$rtp" --ssrc 0100000001 --loop 100 --duration "$((WINDOW + 20))s" >/dev/null &
    PIDS+=("$!")
    sleep 3
    c0=$(cpu "$gw"); t0=$(date +%s.%N)
    case $PROTO in
        rtmp) url="rtmp://127.0.0.1:$rtmp/rtp/05F5E101" ;;
        http-flv) url="http://127.0.0.1:$http/rtp/05F5E101.flv" ;;
        *) url="rtsp://127.0.0.1:$rtsp/rtp/05F5E101" ;;
    esac
    out=$("$BIN" players "$url" --count "$n" --duration "${WINDOW}s")
    c1=$(cpu "$gw"); t1=$(date +%s.%N)
    rss=$(awk '/VmRSS/{print $2}' "/proc/$gw/status"); hwm=$(awk '/VmHWM/{print $2}' "/proc/$gw/status")
    pct=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz/(e-s)*100}')
    echo "== $n ${PROTO^^} players, ${WINDOW}s, merge_write $MERGE: gbgate CPU ${pct}% of one core, RSS $((rss / 1024)) MB (peak $((hwm / 1024)) MB)"
    echo "$out" | sed 's/^/   /'
    kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true
done
