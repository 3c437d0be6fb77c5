#!/usr/bin/env bash
# Scale curve: gbgate's CPU and RSS at 1, 100, 300 and 1000 cameras, over UDP and over TCP, with
# audio transcoding on (the default: G.711A -> AAC), and one RTSP player per camera (TCP
# interleaved, merge_write as configured) at the counts in PLAYERS_AT. Each point is a fresh
# gbgate; the cameras are `gbgate send` replaying the 2.14 Mbit/s 720p25 clip of tools/load.sh,
# the players `gbgate players --spread` (player i plays camera i). One line per point.
#
#   tools/scale.sh                                  # COUNTS="1 100 300 1000" PHASES="udp tcp"
#   COUNTS="1 100" PHASES=udp WINDOW=15 tools/scale.sh
#
# Env: COUNTS, PHASES, PLAYERS_AT ("100 300"), WARMUP (s, default 10), WINDOW (s, default 20),
#      MERGE (RTSP merge_write, default 200ms), BIN (a gbgate binary; default: build release),
#      EXTRA_TOML (appended to the config), LOAD_DIR, RMEM_MAX (as tools/load.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
COUNTS=${COUNTS:-"1 100 300 1000"}
PHASES=${PHASES:-"udp tcp"}
PLAYERS_AT=${PLAYERS_AT:-"100 300"}
WARMUP=${WARMUP:-10}
WINDOW=${WINDOW:-20}
MERGE=${MERGE:-200ms}
RMEM_MAX=${RMEM_MAX:-33554432}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${BIN:-$TARGET/release/gbgate}
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
HZ=$(getconf CLK_TCK)
SSRC_BASE=0100000001
PIDS=()
ORIG_RMEM=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -z $ORIG_RMEM ]] || sysctl -qw net.core.rmem_max="$ORIG_RMEM" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[scale] $*" >&2; }

[[ -s $CLIP ]] || PHASES="" tools/load.sh # makes the clip (and builds) without a load phase
[[ $BIN != "$TARGET/release/gbgate" ]] || cargo build --release -q --bins
CUR_RMEM=$(sysctl -n net.core.rmem_max 2>/dev/null || echo 0)
if ((CUR_RMEM < RMEM_MAX)) && sysctl -qw net.core.rmem_max="$RMEM_MAX" 2>/dev/null; then
    ORIG_RMEM=$CUR_RMEM
fi

ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

point() { # transport count
    local transport=$1 n=$2 rtp api rtsp conf gw snd pl="" players=0 tcpflag=()
    conf=$LOAD_DIR/scale-$transport-$n.toml
    write_load_config "$conf" "$MERGE"
    # Every listener on port 0, read back from --ports-file (start_gbgate): no free-port race.
    start_gbgate "$BIN" "$conf" "$LOAD_DIR/scale-$transport-$n.log" || { echo "gbgate did not start: $LOAD_DIR/scale-$transport-$n.log" >&2; return 1; }
    gw=$GW_PID rtp=$RTP_PORT api=$API_PORT rtsp=$RTSP_PORT
    PIDS+=("$gw")
    [[ $transport == tcp ]] && tcpflag=(--tcp)
    "$BIN" send "$CLIP" --to "127.0.0.1:$rtp" "${tcpflag[@]}" --count "$n" --ssrc "$SSRC_BASE" --loop 100 \
        --duration "$((WARMUP + WINDOW + 5))s" >"$LOAD_DIR/scale-send-$transport-$n.log" 2>&1 &
    snd=$!
    PIDS+=("$snd")
    local at
    for at in $PLAYERS_AT; do [[ $at == "$n" ]] && players=$n; done
    if ((players > 0)); then
        # Players join after half the warm-up (streams live), and play past the window.
        sleep $((WARMUP / 2))
        "$BIN" players "rtsp://127.0.0.1:$rtsp/rtp/05F5E101" --spread --count "$players" \
            --duration "$((WARMUP - WARMUP / 2 + WINDOW + 2))s" >"$LOAD_DIR/scale-players-$transport-$n.txt" 2>&1 &
        pl=$!
        PIDS+=("$pl")
        sleep $((WARMUP - WARMUP / 2))
    else
        sleep "$WARMUP"
    fi
    local g0 g1 s0 s1 t0 t1 rss rss_max=0 i
    g0=$(ticks "$gw")
    s0=$(ticks "$snd")
    t0=$(date +%s.%N)
    for ((i = 0; i < WINDOW; i++)); do
        sleep 1
        rss=$(kb "$gw" VmRSS)
        ((rss > rss_max)) && rss_max=$rss
    done
    g1=$(ticks "$gw")
    s1=$(ticks "$snd")
    t1=$(date +%s.%N)
    local streams live ok lost qd
    streams=$(curl -sf "127.0.0.1:$api/api/v1/streams")
    echo "$streams" >"$LOAD_DIR/scale-streams-$transport-$n.json"
    live=$(jq '.streams | length' <<<"$streams")
    ok=$(jq '[.streams[] | select(.video.codec == "h264" and .video.width == 1280 and .audio != null)] | length' <<<"$streams")
    lost=$(jq '[.streams[].lost] | add // 0' <<<"$streams")
    qd=$(jq '[.streams[].queue_drops] | add // 0' <<<"$streams")
    [[ -z $pl ]] || wait "$pl" || true
    local pinfo="players=0"
    if ((players > 0)); then
        pinfo="players=$players ($(grep -o 'ok [0-9]* errors [0-9]*' "$LOAD_DIR/scale-players-$transport-$n.txt" | head -1), frames/player $(grep -o 'min [0-9]* median [0-9]* max [0-9]*' "$LOAD_DIR/scale-players-$transport-$n.txt" | head -1), $(grep -o 'gaps (packets missed) summed over players: [0-9]*' "$LOAD_DIR/scale-players-$transport-$n.txt" | sed 's/ (packets missed) summed over players:/=/'))"
    fi
    awk -v t="$transport" -v n="$n" -v live="$live" -v ok="$ok" -v g0="$g0" -v g1="$g1" -v s0="$s0" -v s1="$s1" \
        -v w0="$t0" -v w1="$t1" -v hz="$HZ" -v rss="$rss_max" -v hwm="$(kb "$gw" VmHWM)" -v lost="$lost" -v qd="$qd" \
        -v pinfo="$pinfo" 'BEGIN {
        wall = w1 - w0; g = (g1 - g0) / hz / wall * 100; s = (s1 - s0) / hz / wall * 100
        printf "%s cameras=%d live=%d ok=%d gbgate_cpu=%.1f%% (%.4f%%/camera) rss=%.1f MB (%.2f MB/camera) hwm=%.1f MB lost=%d queue_drops=%d sender_cpu=%.1f%% %s\n",
            t, n, live, ok, g, (n ? g / n : 0), rss / 1024, (n ? rss / 1024 / n : 0), hwm / 1024, lost, qd, s, pinfo
    }'
    kill "$snd" "$gw" 2>/dev/null || true
    wait "$snd" "$gw" 2>/dev/null || true
    PIDS=()
}

log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); binary $BIN; merge_write $MERGE"
for transport in $PHASES; do
    for n in $COUNTS; do
        point "$transport" "$n"
    done
done
