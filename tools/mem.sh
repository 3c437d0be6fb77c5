#!/usr/bin/env bash
# Memory under load and after it (issue 12): for each VARIANT (a binary and an environment), one
# fresh `gbgate run` is fed COUNT simulated cameras (the tools/load.sh clip: 720p25 H.264 2 Mbit/s
# + G.711A, transcoded to AAC by default) over UDP for LOAD seconds, then the sender stops. This
# is done ROUNDS times (a burst, then idle while the streams time out and are removed). Printed per
# variant: RSS at start, CPU and RSS (max and mean) over the last WINDOW seconds of each burst, RSS
# IDLE seconds after each burst (what the allocator gave back), and the GOP budget counters.
#
#   tools/mem.sh                                             # the release binary, glibc
#   VARIANTS="glibc|target/release/gbgate| jemalloc|target/release/gbgate|LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" tools/mem.sh
#
# Env: COUNT (300), LOAD (30 s per burst), WINDOW (last 15 s of it measured), IDLE (20 s),
#      ROUNDS (2), VARIANTS ("name|binary|VAR=value;VAR=value" separated by spaces),
#      EXTRA_TOML (appended to the config), LOAD_DIR (clip + logs, as tools/load.sh).
# The binary is not built here: run `cargo build --release --bins --examples` first.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
COUNT=${COUNT:-300}
LOAD=${LOAD:-30}
WINDOW=${WINDOW:-15}
IDLE=${IDLE:-20}
ROUNDS=${ROUNDS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
VARIANTS=${VARIANTS:-"glibc|$TARGET/release/gbgate|"}
MK=$TARGET/release/examples/mkfixtures
HZ=$(getconf CLK_TCK)
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
mkdir -p "$LOAD_DIR"

PIDS=()
ORIG_RMEM=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -n $ORIG_RMEM ]] && sysctl -qw net.core.rmem_max="$ORIG_RMEM" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[mem] $*" >&2; }

if [[ ! -s $CLIP ]]; then
    # The same clip as tools/load.sh (20 s, GOP 2 s).
    log "making the 20 s 720p 2 Mbit/s H.264 + G.711A clip"
    WORK=$(mktemp -d)
    FF=(ffmpeg -hide_banner -loglevel error -nostdin -y)
    "${FF[@]}" -f lavfi -i "testsrc2=size=1280x720:rate=25" -t 20 -an \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -b:v 2M -maxrate 2M -bufsize 2M \
        -g 50 -keyint_min 50 -sc_threshold 0 -bf 0 -bsf:v h264_metadata=aud=insert -f h264 "$WORK/v.es"
    "${FF[@]}" -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=8000:duration=20" \
        -ar 8000 -ac 1 -f alaw "$WORK/a.alaw"
    s=$(ffprobe -v error -count_frames -select_streams v:0 \
        -show_entries stream=codec_name,width,height,nb_read_frames -of csv=p=0 "$WORK/v.es")
    k=$(ffprobe -v error -select_streams v:0 -show_entries frame=key_frame -of csv=p=0 "$WORK/v.es" |
        grep -c '^1' || true)
    "$MK" mux --name clip --out-dir "$WORK" --stats "$WORK/stats.json" --ssrc 0100000001 \
        --video-codec h264 --video "$WORK/v.es" --video-probe "${s%%[[:space:]]},$k" \
        --audio-codec g711a --audio "$WORK/a.alaw" --sample-rate 8000
    mv "$WORK/clip.rtp" "$CLIP"
    rm -rf "$WORK"
fi

# As tools/load.sh: a 32 MiB UDP receive buffer if the kernel lets us raise the cap.
CUR_RMEM=$(sysctl -n net.core.rmem_max 2>/dev/null || echo 0)
if ((CUR_RMEM < 33554432)) && sysctl -qw net.core.rmem_max=33554432 2>/dev/null; then
    ORIG_RMEM=$CUR_RMEM
fi

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

run_variant() { # name bin env
    local name=$1 bin=$2 envs=$3 rtp api conf gw snd
    conf=$LOAD_DIR/mem-$name.toml
    write_load_config "$conf"
    local e=()
    [[ -n $envs ]] && IFS=";" read -ra e <<<"$envs"
    start_gbgate "$bin" "$conf" "$LOAD_DIR/mem-$name.log" "${e[@]}" || {
        echo "gbgate did not start; see $LOAD_DIR/mem-$name.log" >&2
        exit 1
    }
    gw=$GW_PID rtp=$RTP_PORT api=$API_PORT
    PIDS=("$gw")
    sleep 1
    local start out
    start=$(rss_kb "$gw")
    out="variant=$name start=$(mb "$start")MB"
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        "$bin" send "$CLIP" --to "127.0.0.1:$rtp" --count "$COUNT" --ssrc 0100000001 --loop 100 \
            --duration "${LOAD}s" >"$LOAD_DIR/mem-send-$name.log" 2>&1 &
        snd=$!
        PIDS+=("$snd")
        sleep $((LOAD - WINDOW))
        local g0 g1 t0 t1 max=0 sum=0 n=0 rss live
        g0=$(cpu_ticks "$gw")
        t0=$(date +%s.%N)
        for ((i = 0; i < WINDOW; i++)); do
            sleep 1
            rss=$(rss_kb "$gw")
            ((rss > max)) && max=$rss
            sum=$((sum + rss))
            n=$((n + 1))
        done
        g1=$(cpu_ticks "$gw")
        t1=$(date +%s.%N)
        live=$(curl -sf "http://127.0.0.1:$api/api/v1/streams" | jq '.streams | length')
        local budget
        budget=$(curl -sf "http://127.0.0.1:$api/api/v1/rtp" | jq -c '{gop_budget_clears, gop_cache_bytes_total: .gop_cache_bytes, gop_cache_evictions}' 2>/dev/null || echo '{}')
        wait "$snd" 2>/dev/null || true
        sleep "$IDLE"
        local idle
        idle=$(rss_kb "$gw")
        out+=" | burst$r: live=$live cpu=$(awk -v a="$g0" -v b="$g1" -v x="$t0" -v y="$t1" -v hz="$HZ" 'BEGIN { printf "%.1f", (b - a) / hz / (y - x) * 100 }')% rss_max=$(mb "$max")MB rss_mean=$(mb $((sum / n)))MB per_camera_max=$(awk -v m="$max" -v c="$COUNT" 'BEGIN { printf "%.3f", m / 1024 / c }')MB budget=$budget idle_after=$(mb "$idle")MB"
    done
    echo "$out"
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    PIDS=()
}

log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for v in $VARIANTS; do
    IFS='|' read -r name bin envs <<<"$v"
    run_variant "$name" "$bin" "$envs"
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
