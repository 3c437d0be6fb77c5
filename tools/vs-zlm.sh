#!/usr/bin/env bash
# Side by side with ZLMediaKit on the same loads, alternating fresh processes, loopback; prints
# gbgate / ZLMediaKit ratios measured in the same run. Nothing is downloaded or built: bring your
# own ZLMediaKit build.
#
#   ZLM_BIN=/path/to/ZLMediaKit/release/linux/Release/MediaServer \
#   ZLM_CONF=/path/to/ZLMediaKit/conf/config.ini tools/vs-zlm.sh
#
# Scenarios (SCENARIOS, default all):
#   ingest      CAMERAS (300) cameras over UDP, no players: CPU and RSS over WINDOW s. ZLMediaKit
#               runs with every protocol on demand (rtsp/rtmp/hls/ts/fmp4_demand=1, as gbgate
#               muxes only for players); gbgate with its default (G.711 -> AAC). ZLMediaKit
#               transcodes audio only if ZLM_CONF asks for it: say which in the figures. After
#               each window: gbgate's loss counters (lost, queue drops, audio dropped, transcoder
#               errors) and what ffprobe reads from both servers' RTSP and RTMP of one stream.
#   fanout      one camera, PLAYERS (300) players of it, RTSP then RTMP, at MERGES ("200 0",
#               ms: ZLMediaKit general.mergeWriteMS, gbgate merge_write): CPU and RSS.
#   join        JOINS (50) sequential players joining mid-GOP, TCP connect -> first keyframe
#               packet, RTSP and RTMP (the same client, `gbgate players --joins`).
# Env: ROUNDS (2: each scenario runs gbgate, ZLMediaKit, gbgate, ZLMediaKit, ...), WINDOW (20),
#      INGEST_WARMUP (40: past gbgate's start-up code release at 10 s and its new streams' GOP
#      caches, kept for gop_cache_idle = 30 s), FANOUT_WARMUP (10: past the release),
#      JOIN_WARMUP (12: the joins measure the steady state, after the release; JOIN_WARMUP=3
#      shows joins that fault code back in),
#      BIN (gbgate; default: build release), SEND_BIN (the sender and players; default BIN),
#      LOAD_DIR.
# CPU is printed with its user and system parts: at 200 ms merges most of it is the kernel's
# loopback TCP, which both servers pay for the same bytes.
# The clip is tools/load.sh's (2.14 Mbit/s 720p25 H.264 + G.711A over PS/RTP); ZLMediaKit names a
# GB stream rtp/<SSRC in hex>, as gbgate does, so both are played at the same URLs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
if [[ -z ${ZLM_BIN:-} || ! -x ${ZLM_BIN:-/nonexistent} ]]; then
    echo "vs-zlm: set ZLM_BIN to a ZLMediaKit MediaServer you built (and ZLM_CONF to its config.ini);" \
        "nothing is downloaded. ZLM_BIN='${ZLM_BIN:-}' is not an executable." >&2
    exit 2
fi
if [[ -z ${ZLM_CONF:-} || ! -s ${ZLM_CONF:-/nonexistent} ]]; then
    echo "vs-zlm: set ZLM_CONF to the config.ini of your ZLMediaKit build (conf/config.ini)" >&2
    exit 2
fi
SCENARIOS=${SCENARIOS:-"ingest fanout join"}
ROUNDS=${ROUNDS:-2}
CAMERAS=${CAMERAS:-300}
PLAYERS=${PLAYERS:-300}
MERGES=${MERGES:-"200 0"}
JOINS=${JOINS:-50}
INGEST_WARMUP=${INGEST_WARMUP:-40}
FANOUT_WARMUP=${FANOUT_WARMUP:-10}
JOIN_WARMUP=${JOIN_WARMUP:-12}
WINDOW=${WINDOW:-20}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${BIN:-$TARGET/release/gbgate}
# The sender and the players: another copy of gbgate keeps their pages out of the server's RSS
# (they would fault the same file into the page cache the server maps).
SEND_BIN=${SEND_BIN:-$BIN}
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
HZ=$(getconf CLK_TCK)
SECRET=vs-zlm-$$
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[vs-zlm] $*" >&2; }

[[ -s $CLIP ]] || PHASES="" tools/load.sh
[[ $BIN != "$TARGET/release/gbgate" ]] || cargo build --release -q --bins
mkdir -p "$LOAD_DIR/zlm"

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; } # user system
kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# ZLMediaKit's config: the user's ZLM_CONF with our ports and settings (section.key=value ...).
zlm_conf() { # out key=value...
    python3 - "$ZLM_CONF" "$@" <<'EOF'
import configparser, sys
src, out, *sets = sys.argv[1:]
c = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=('#', ';'))
c.optionxform = str
c.read(src, encoding='utf-8')
for s in sets:
    key, value = s.split('=', 1)
    section, name = key.split('.', 1)
    if not c.has_section(section):
        c.add_section(section)
    c.set(section, name, value)
with open(out, 'w', encoding='utf-8') as f:
    c.write(f)
EOF
}

# Starts one server; sets SRV_PID, RTP, RTSP, RTMP. kind = gbgate|zlm, merge in ms; demand (1)
# is ZLMediaKit's *_demand: 1 muxes a protocol only while it has players (as gbgate does).
start_server() { # kind merge_ms tag [demand]
    local kind=$1 merge=$2 tag=$3 demand=${4:-1} api
    # Both binaries start with their pages out of the page cache (as tools/rss.sh, D187): a binary
    # just built or copied maps more of itself on each fault, which would inflate its RSS.
    evict_page_cache "$BIN"
    evict_page_cache "$ZLM_BIN"
    if [[ $kind == gbgate ]]; then
        # gbgate: every listener on port 0, read back from --ports-file (start_gbgate).
        # ZLMediaKit cannot report its ports, so it gets free ones picked just before.
        local conf=$LOAD_DIR/vs-gbgate-$tag.toml
        # Fan-out: the fan-out config (SIP and WebRTC off, as ZLMediaKit's rtc and srt are here).
        if [[ $tag == fanout-* ]]; then
            write_fanout_config "$conf" "${merge}ms"
        else
            write_load_config "$conf" "${merge}ms"
        fi
        start_gbgate "$BIN" "$conf" "$LOAD_DIR/vs-gbgate-$tag.log" || { log "gbgate did not start: $LOAD_DIR/vs-gbgate-$tag.log"; exit 1; }
        SRV_PID=$GW_PID RTP=$RTP_PORT RTSP=$RTSP_PORT RTMP=$RTMP_PORT API=$API_PORT
    else
        RTP=$(port)
        RTSP=$(port)
        RTMP=$(port)
        api=$(port)
        API=$api
        # Absolute: ZLMediaKit runs from inside it (it writes its logs under its working directory).
        local dir
        dir=$(realpath -m "$LOAD_DIR/zlm/$tag")
        mkdir -p "$dir"
        # Every listener we do not use on a free port or off, so nothing clashes with the host.
        zlm_conf "$dir/config.ini" "api.secret=$SECRET" "api.apiDebug=0" \
            "http.port=$api" "http.sslport=0" "rtsp.port=$RTSP" "rtsp.sslport=0" "rtmp.port=$RTMP" \
            "rtmp.sslport=0" "rtp_proxy.port=$RTP" "rtp_proxy.timeoutSec=15" "rtc.port=0" "rtc.tcpPort=0" \
            "srt.port=0" "shell.port=0" "general.mergeWriteMS=$merge" "hook.enable=0" \
            "protocol.enable_hls=0" "protocol.enable_mp4=0" "protocol.hls_demand=1" "protocol.rtsp_demand=$demand" \
            "protocol.rtmp_demand=$demand" "protocol.ts_demand=1" "protocol.fmp4_demand=1"
        (cd "$dir" && exec "$ZLM_BIN" -c "$dir/config.ini" >"$dir/stdout.log" 2>&1) &
        SRV_PID=$!
        for _ in $(seq 100); do
            curl -sf "127.0.0.1:$api/index/api/getServerConfig?secret=$SECRET" >/dev/null && break
            sleep 0.1
        done
    fi
    PIDS+=("$SRV_PID")
}

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    sleep 1
}

# CPU (% of one core; USR and SYS its parts) and peak RSS (MB) of SRV_PID over WINDOW s: sets
# CPU, USR, SYS, RSS.
measure() {
    local g0 g1 t0 t1 r m=0 i
    g0=$(ticks "$SRV_PID")
    t0=$(date +%s.%N)
    for ((i = 0; i < WINDOW; i++)); do
        sleep 1
        r=$(kb "$SRV_PID" VmRSS)
        ((r > m)) && m=$r
    done
    g1=$(ticks "$SRV_PID")
    t1=$(date +%s.%N)
    read -r USR SYS CPU < <(awk -v a="$g0" -v b="$g1" -v s="$t0" -v e="$t1" -v hz="$HZ" 'BEGIN{
        split(a, x, " "); split(b, y, " "); k = 100 / hz / (e - s)
        printf "%.2f %.2f %.2f\n", (y[1] - x[1]) * k, (y[2] - x[2]) * k, (y[1] + y[2] - x[1] - x[2]) * k }')
    RSS=$(awk -v k="$m" 'BEGIN{printf "%.1f", k/1024}')
}

# How many streams the server has (a server that lost cameras would look cheap).
streams() { # kind
    if [[ $1 == gbgate ]]; then
        curl -sf "127.0.0.1:$API/api/v1/streams" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["streams"]))'
    else
        curl -sf "127.0.0.1:$API/index/api/getMediaList?secret=$SECRET" |
            python3 -c 'import json,sys; print(len({m["stream"] for m in json.load(sys.stdin).get("data") or []}))'
    fi
}

# gbgate's loss counters over all streams since start: issue 12 asks for no loss and no queue
# drops with transcoding on (ZLMediaKit's API reports no such counters).
ingest_losses() {
    # A field missing from the API fails loudly (a traceback), never reads as 0 lost.
    curl -sf "127.0.0.1:$API/api/v1/streams" | python3 -c '
import json, sys
streams = json.load(sys.stdin)["streams"]
media = [x["media"] for x in streams]
coded = [m["transcode"] for m in media if m["transcode"]]
total = lambda rows, key: sum(r[key] for r in rows)
print("lost %d, queue drops %d, audio frames dropped before transcoding %d (worker behind) + %d (hold queue), "
      "%d streams transcoded %d -> %d frames, %d errors" % (
    total(streams, "lost"), total(streams, "queue_drops"), total(media, "audio_queue_dropped"),
    total(media, "audio_held_dropped"), len(coded), total(coded, "frames_in"), total(coded, "frames_out"),
    total(coded, "errors")))'
}

# What a player gets from URL: each stream's codec, size or rate and channels (ffprobe).
outputs() { # url
    local args=()
    [[ $1 == rtsp://* ]] && args=(-rtsp_transport tcp)
    timeout 20 ffprobe -v error "${args[@]}" -show_entries stream=codec_name,width,height,sample_rate,channels \
        -of csv=p=0 "$1" 2>&1 | tr '\n' ';' | sed 's/,,*/,/g; s/,;/;/g; s/;$//' || echo "ffprobe failed"
}

declare -A RES
record() { # key kind value
    RES[$1.$2]="${RES[$1.$2]:-} $3"
}

ingest() { # kind round
    start_server "$1" 200 "ingest-$1-$2"
    "$SEND_BIN" send "$CLIP" --to "127.0.0.1:$RTP" --count "$CAMERAS" --ssrc 0100000001 --loop 100 \
        --duration "$((INGEST_WARMUP + WINDOW + 5))s" >/dev/null 2>&1 &
    PIDS+=("$!")
    sleep "$INGEST_WARMUP"
    measure
    log "ingest $CAMERAS cameras, $1: CPU $CPU % (user $USR, system $SYS), RSS $RSS MB, $(streams "$1") streams live"
    record "ingest.cpu" "$1" "$CPU"
    record "ingest.rss" "$1" "$RSS"
    # After the window (probing costs CPU): what was lost on the way, and what players get.
    [[ $1 == gbgate ]] && log "ingest, gbgate: $(ingest_losses)"
    log "ingest, $1, rtsp://.../rtp/05F5E101: $(outputs "rtsp://127.0.0.1:$RTSP/rtp/05F5E101")"
    log "ingest, $1, rtmp://.../rtp/05F5E101: $(outputs "rtmp://127.0.0.1:$RTMP/rtp/05F5E101")"
    stop_all
}

fanout() { # kind round proto merge
    local kind=$1 proto=$3 merge=$4 url
    start_server "$kind" "$merge" "fanout-$kind-$2-$proto-$merge"
    "$SEND_BIN" send "$CLIP" --to "127.0.0.1:$RTP" --ssrc 0100000001 --loop 100 \
        --duration "$((FANOUT_WARMUP + WINDOW + 10))s" >/dev/null 2>&1 &
    PIDS+=("$!")
    sleep 3
    case $proto in
        rtsp) url="rtsp://127.0.0.1:$RTSP/rtp/05F5E101" ;;
        rtmp) url="rtmp://127.0.0.1:$RTMP/rtp/05F5E101" ;;
    esac
    local report=$LOAD_DIR/vs-players-$kind-$proto-$merge.txt players
    "$SEND_BIN" players "$url" --count "$PLAYERS" --duration "$((FANOUT_WARMUP + WINDOW + 2))s" >"$report" 2>&1 &
    players=$!
    PIDS+=("$players")
    sleep "$FANOUT_WARMUP"
    measure
    log "fanout $PLAYERS $proto players, merge ${merge}ms, $kind: CPU $CPU % (user $USR, system $SYS), RSS $RSS MB"
    # What the players got (a server that dropped players or frames would look cheap).
    wait "$players" || true
    log "  players: $(grep -h '^players \|^video frames\|^closed early' "$report" | tr '\n' ' ')"
    record "fanout.$proto.$merge.cpu" "$kind" "$CPU"
    record "fanout.$proto.$merge.rss" "$kind" "$RSS"
    stop_all
}

join_scn() { # kind round
    local kind=$1 proto out p50
    # ZLMediaKit at its fastest join: RTSP and RTMP muxed all the time (demand 0), so a join never
    # waits for a muxer created on demand to see its first keyframe.
    start_server "$kind" 200 "join-$kind-$2" 0
    "$SEND_BIN" send "$CLIP" --to "127.0.0.1:$RTP" --ssrc 0100000001 --loop 100 --duration 120s >/dev/null 2>&1 &
    PIDS+=("$!")
    sleep "$JOIN_WARMUP"
    for proto in rtsp rtmp; do
        local url="rtsp://127.0.0.1:$RTSP/rtp/05F5E101"
        [[ $proto == rtmp ]] && url="rtmp://127.0.0.1:$RTMP/rtp/05F5E101"
        # Once first, so an on-demand muxer (ZLMediaKit's *_demand) exists before the measured joins.
        "$SEND_BIN" players "$url" --joins 1 --duration 5s >/dev/null 2>&1 || true
        out=$("$SEND_BIN" players "$url" --joins "$JOINS" --duration 5s || true)
        p50=$(grep -o 'keyframe packet: p50 [0-9.]* ms, p99 [0-9.]* ms, max [0-9.]* ms' <<<"$out" || echo "failed")
        log "join $proto, $kind: $p50"
        # "keyframe packet: p50 A ms, p99 B ms, max C ms"
        record "join.$proto.p50" "$kind" "$(awk '{print $4}' <<<"$p50")"
        record "join.$proto.p99" "$kind" "$(awk '{print $7}' <<<"$p50")"
    done
    stop_all
}

log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); gbgate $BIN; ZLMediaKit $ZLM_BIN"
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $SCENARIOS; do
        for kind in gbgate zlm; do
            case $s in
                ingest) ingest "$kind" "$r" ;;
                fanout) for proto in rtsp rtmp; do for m in $MERGES; do fanout "$kind" "$r" "$proto" "$m"; done; done ;;
                join) join_scn "$kind" "$r" ;;
            esac
        done
    done
done

echo "== gbgate / ZLMediaKit, per round (same session, alternating fresh processes)"
for key in $(printf '%s\n' "${!RES[@]}" | sed 's/\.[^.]*$//' | sort -u); do
    read -r -a g <<<"${RES[$key.gbgate]:-}"
    read -r -a z <<<"${RES[$key.zlm]:-}"
    line="$key:"
    for ((i = 0; i < ${#g[@]} && i < ${#z[@]}; i++)); do
        line+=" $(awk -v a="${g[$i]}" -v b="${z[$i]}" 'BEGIN{ if (b > 0) printf "%s/%s=%.2f", a, b, a/b; else printf "%s/%s=n/a", a, b }')"
    done
    echo "$line"
done
