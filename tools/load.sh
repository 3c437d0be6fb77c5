#!/usr/bin/env bash
# Whole-process load test on loopback: COUNT simulated cameras (720p25 H.264 ~2 Mbit/s + G.711A
# 8 kHz, GB28181 PS over RTP) sent by `gbgate send` to one `gbgate run`, first over UDP, then over
# TCP. After WARMUP seconds, gbgate's and the sender's CPU (from /proc/<pid>/stat) and gbgate's
# RSS (VmRSS/VmHWM) are sampled over WINDOW seconds; the API is checked for COUNT live streams
# with the right codecs and for loss. One summary line per phase (with gbgate's minor page faults
# per second), then gbgate's CPU split by thread (rtp-udp: UDP receive + demux + publish;
# gbgate-audio: the transcoders; tokio-rt-worker: TCP ingest, timers, API).
#
#   tools/load.sh                      # COUNT=100 WARMUP=10 WINDOW=30, UDP then TCP (~2 min)
#   COUNT=10 PHASES=udp tools/load.sh
#
# Env: COUNT (cameras), WARMUP, WINDOW (seconds), PHASES ("udp tcp"), CLIP_SECONDS (source clip),
#      RMEM_MAX (try to raise net.core.rmem_max to this; failure is reported, not fatal),
#      LOAD_DIR (cache + logs, default $CARGO_TARGET_DIR/load or target/load),
#      EXTRA_TOML (appended to the generated gbgate config, e.g. $'[hub]\ngop_cache_bytes = 1024'),
#      GBGATE_BIN (a gbgate binary to run instead of building this tree's, e.g. one built from the
#      base commit for a before/after pair in one session: the sender is still this tree's),
#      NO_BUILD=1 (skip the build), SEND_BIN (the binary whose `send` drives the cameras; default this tree's),
#      PROFILE=1 (perf record gbgate over the window into $LOAD_DIR/perf-<phase>.data; perf's own
#      overhead then inflates the CPU figure, so do not take figures from a profiled run).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
COUNT=${COUNT:-100}
WARMUP=${WARMUP:-10}
WINDOW=${WINDOW:-30}
PHASES=${PHASES-udp tcp}
CLIP_SECONDS=${CLIP_SECONDS:-20}
PROFILE=${PROFILE:-}
RMEM_MAX=${RMEM_MAX:-33554432}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${GBGATE_BIN:-$TARGET/release/gbgate}
SEND=${SEND_BIN:-$TARGET/release/gbgate}
MK=$TARGET/release/examples/mkfixtures
SSRC_BASE=0100000001
# The sender runs a little longer than the measurement so streams are still live when checked.
DURATION=$((WARMUP + WINDOW + 5))
HZ=$(getconf CLK_TCK)

mkdir -p "$LOAD_DIR"
PIDS=()
ORIG_RMEM=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [[ -n $ORIG_RMEM ]]; then
        sysctl -qw net.core.rmem_max="$ORIG_RMEM" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[load] $*" >&2; }

# 1. Build.
if [[ -n ${NO_BUILD:-} ]]; then
    log "NO_BUILD set: using the binaries as they are"
else
    log "building release binaries"
    cargo build --release --bins --examples -q
fi

# 2. The camera stream, cached.
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
if [[ ! -s $CLIP ]]; then
    log "making a ${CLIP_SECONDS}s 1280x720 25 fps 2 Mbit/s H.264 + G.711A stream"
    WORK=$(mktemp -d)
    FF=(ffmpeg -hide_banner -loglevel error -nostdin -y)
    "${FF[@]}" -f lavfi -i "testsrc2=size=1280x720:rate=25" -t "$CLIP_SECONDS" -an \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -b:v 2M -maxrate 2M -bufsize 2M \
        -g 50 -keyint_min 50 -sc_threshold 0 -bf 0 -bsf:v h264_metadata=aud=insert \
        -f h264 "$WORK/v.es"
    "${FF[@]}" -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=8000:duration=$CLIP_SECONDS" \
        -ar 8000 -ac 1 -f alaw "$WORK/a.alaw"
    s=$(ffprobe -v error -count_frames -select_streams v:0 \
        -show_entries stream=codec_name,width,height,nb_read_frames -of csv=p=0 "$WORK/v.es")
    k=$(ffprobe -v error -select_streams v:0 -show_entries frame=key_frame -of csv=p=0 "$WORK/v.es" |
        grep -c '^1' || true)
    "$MK" mux --name clip --out-dir "$WORK" --stats "$WORK/stats.json" --ssrc 0100000001 \
        --video-codec h264 --video "$WORK/v.es" --video-probe "${s%%[[:space:]]},$k" \
        --audio-codec g711a --audio "$WORK/a.alaw" --sample-rate 8000
    cp "$WORK/stats.json" "$LOAD_DIR/cam720p_2m_g711a.json"
    mv "$WORK/clip.rtp" "$CLIP"
    rm -rf "$WORK"
fi
CLIP_BYTES=$(stat -c %s "$CLIP")
log "stream: $CLIP ($(awk -v b="$CLIP_BYTES" -v s="$CLIP_SECONDS" 'BEGIN{printf "%.2f", b*8/s/1e6}') Mbit/s incl. PS+RTP)"

# Receive buffer: try to raise the cap (may be refused in a sandbox).
CUR_RMEM=$(sysctl -n net.core.rmem_max 2>/dev/null || echo 0)
if ((CUR_RMEM < RMEM_MAX)); then
    if sysctl -qw net.core.rmem_max="$RMEM_MAX" 2>/dev/null; then
        ORIG_RMEM=$CUR_RMEM
        log "net.core.rmem_max raised $CUR_RMEM -> $RMEM_MAX (restored on exit)"
    else
        log "net.core.rmem_max stays $CUR_RMEM (sysctl -w refused)"
    fi
fi

status_kb() { # pid field -> kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}
udp_rcvbuf_errors() {
    awk '/^Udp:/ { if (!h) { h = 1; next } print $6 }' /proc/net/snmp
}

run_phase() { # udp|tcp
    local transport=$1 rtp_port api_port conf gw snd tcpflag=()
    conf=$LOAD_DIR/gbgate-$transport.toml
    write_load_config "$conf"
    start_gbgate "$BIN" "$conf" "$LOAD_DIR/gbgate-$transport.log" || {
        log "gbgate did not start; see $LOAD_DIR/gbgate-$transport.log"
        exit 1
    }
    gw=$GW_PID rtp_port=$RTP_PORT api_port=$API_PORT
    PIDS+=("$gw")
    local granted
    granted=$(grep -o 'granted=[0-9]*' "$LOAD_DIR/gbgate-$transport.log" | head -1 | cut -d= -f2 || true)
    [[ $transport == tcp ]] && tcpflag=(--tcp)
    log "$transport: $COUNT cameras -> 127.0.0.1:$rtp_port for ${DURATION}s (warm-up ${WARMUP}s, window ${WINDOW}s)"
    "$SEND" send "$CLIP" --to "127.0.0.1:$rtp_port" "${tcpflag[@]}" --count "$COUNT" --ssrc "$SSRC_BASE" \
        --loop 100 --duration "${DURATION}s" >"$LOAD_DIR/send-$transport.log" 2>&1 &
    snd=$!
    PIDS+=("$snd")

    sleep "$WARMUP"
    local g0 s0 e0 t0 g1 s1 e1 t1 f0 f1 rss_max=0 rss
    g0=$(cpu_ticks "$gw")
    f0=$(minor_faults "$gw")
    thread_ticks "$gw" >"$LOAD_DIR/threads0-$transport.txt"
    s0=$(cpu_ticks "$snd")
    e0=$(udp_rcvbuf_errors)
    t0=$(date +%s.%N)
    local perf_pid=""
    if [[ -n $PROFILE ]]; then
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$gw" -o "$LOAD_DIR/perf-$transport.data" \
            -- sleep "$WINDOW" >"$LOAD_DIR/perf-$transport.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    for ((i = 0; i < WINDOW; i++)); do
        sleep 1
        rss=$(status_kb "$gw" VmRSS)
        ((rss > rss_max)) && rss_max=$rss
    done
    g1=$(cpu_ticks "$gw")
    f1=$(minor_faults "$gw")
    thread_ticks "$gw" >"$LOAD_DIR/threads1-$transport.txt"
    s1=$(cpu_ticks "$snd")
    e1=$(udp_rcvbuf_errors)
    t1=$(date +%s.%N)
    [[ -n $perf_pid ]] && { wait "$perf_pid" || true; }
    local hwm streams rtp
    hwm=$(status_kb "$gw" VmHWM)
    # Memory breakdown for later: the largest mappings by RSS, and the thread count.
    cat "/proc/$gw/smaps" >"$LOAD_DIR/smaps-$transport.txt" 2>/dev/null || true
    log "$transport: gbgate threads=$(status_kb "$gw" Threads), largest mappings by RSS (kB): $(awk '
        /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) }
        /^Rss:/ { if ($2 >= 1024) printf "%s=%d ", name, $2 }' "$LOAD_DIR/smaps-$transport.txt" | tr ' ' '\n' |
        sort -t= -k2 -rn | head -8 | tr '\n' ' ')"
    streams=$(curl -sf "http://127.0.0.1:$api_port/api/v1/streams")
    rtp=$(curl -sf "http://127.0.0.1:$api_port/api/v1/rtp")
    echo "$streams" >"$LOAD_DIR/streams-$transport.json"
    echo "$rtp" >"$LOAD_DIR/rtp-$transport.json"

    local live ok lost qdrops pkts
    live=$(jq '.streams | length' <<<"$streams")
    ok=$(jq '[.streams[] | select(.video.codec == "h264" and .video.width == 1280 and .video.height == 720
             and .audio.codec == "g711a")] | length' <<<"$streams")
    lost=$(jq '[.streams[].lost] | add // 0' <<<"$streams")
    qdrops=$(jq '[.streams[].queue_drops] | add // 0' <<<"$streams")
    pkts=$(jq '[.streams[].packets] | add // 0' <<<"$streams")
    local summary
    summary=$(awk -v t="$transport" -v n="$live" -v ok="$ok" -v g0="$g0" -v g1="$g1" -v s0="$s0" -v s1="$s1" \
        -v w0="$t0" -v w1="$t1" -v hz="$HZ" -v rss="$rss_max" -v hwm="$hwm" -v lost="$lost" -v qd="$qdrops" \
        -v pk="$pkts" -v ue="$((e1 - e0))" -v c="$COUNT" -v pf="$((f1 - f0))" 'BEGIN {
            wall = w1 - w0
            g = (g1 - g0) / hz / wall * 100
            s = (s1 - s0) / hz / wall * 100
            printf "phase=%s streams=%d/%d ok(h264 1280x720+g711a)=%d gbgate_cpu=%.1f%% of one core, per_camera=%.3f%%, rss=%.1f MB (max in window), hwm=%.1f MB, sender_cpu=%.1f%%, packets=%d lost=%d queue_drops=%d udp_rcvbuf_errors(window, host-wide)=%d page_faults_per_s=%.0f",
                t, n, c, ok, g, (n > 0 ? g / n : 0), rss / 1024, hwm / 1024, s, pk, lost, qd, ue, pf / wall
        }')
    echo "$summary"
    log "$transport: CPU by thread (share of one core, per camera): $(thread_split "$LOAD_DIR/threads0-$transport.txt" \
        "$LOAD_DIR/threads1-$transport.txt" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$COUNT")"
    log "$transport /api/v1/rtp: $(jq -c . <<<"$rtp")"
    [[ -n $granted ]] && log "$transport: UDP SO_RCVBUF capped by the kernel, granted=$granted bytes"

    kill "$snd" "$gw" 2>/dev/null || true
    wait "$snd" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    PIDS=()
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for phase in $PHASES; do
    run_phase "$phase"
done
