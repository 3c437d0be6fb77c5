# Shared by the load tools (sourced, not run): the load gateway's config and its
# start on ports the kernel chooses, read back from gbgate's `--ports-file` (no free-port race).

# write_load_config FILE [MERGE]: a gateway for simulated cameras, every listener on port 0, SIP
# off (tools/load.sh, mem.sh). With MERGE also for players: RTSP and RTMP take 5,000 connections
# and `merge_write = MERGE` (tools/latency.sh, scale.sh, vs-zlm.sh).
write_load_config() {
    local players=""
    [[ -n ${2:-} ]] && players=$'\nmax_connections = 5000\nmax_connections_per_source = 5000\nmerge_write = "'"$2"'"'
    cat >"$1" <<EOF
[rtp]
listen = "127.0.0.1:0"
unknown_ssrc = "publish"
# Room beyond the largest load (1,000 cameras).
max_streams = 2000
max_tcp_connections = 2000
# Every simulated camera sends from 127.0.0.1 with an unannounced SSRC.
max_unknown_streams = 2000
max_unknown_per_source = 2000
max_tcp_per_source = 2000
timeout = "10s"
recv_buffer = 33554432

# Every listener on port 0: several load runs (or a gbgate already running) on one machine do
# not collide on the default ports.
[api]
listen = "127.0.0.1:0"

[rtsp]
listen = "127.0.0.1:0"$players

[rtmp]
listen = "127.0.0.1:0"$players

[http]
listen = "127.0.0.1:0"

[webrtc]
listen = "127.0.0.1:0"

[sip]
enabled = false

[log]
level = "info"
EOF
    [[ -n ${EXTRA_TOML:-} ]] && printf '%s\n' "$EXTRA_TOML" >>"$1"
    return 0
}

# write_fanout_config FILE MERGE: a gateway for one camera and many players (tools/fanout.sh,
# tools/rss.sh): every listener on port 0, player limits raised, `merge_write = MERGE`, SIP and
# WebRTC off (not measured; another gateway on this host keeps its default ports).
write_fanout_config() {
    cat >"$1" <<EOF
[rtp]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[rtsp]
listen = "127.0.0.1:0"
max_connections = 5000
max_connections_per_source = 5000
merge_write = "$2"
[rtmp]
listen = "127.0.0.1:0"
max_connections = 5000
max_connections_per_source = 5000
merge_write = "$2"
[http]
listen = "127.0.0.1:0"
max_connections = 5000
max_connections_per_source = 5000
merge_write = "$2"
[sip]
enabled = false
[webrtc]
enabled = false
EOF
}

# start_gbgate BIN CONF LOG [NAME=VALUE...]: starts `BIN run` in the background with those
# environment variables, waits (10 s) for its ports file; sets GW_PID, RTP_PORT, API_PORT,
# RTSP_PORT, RTMP_PORT and HTTP_PORT (empty for a listener that is off).
# Returns non-zero if gbgate exits or does not come up.
start_gbgate() {
    local bin=$1 conf=$2 log=$3 ports=${2%.toml}.ports.json i
    shift 3
    rm -f "$ports"
    env "$@" "$bin" run -c "$conf" --ports-file "$ports" >"$log" 2>&1 &
    GW_PID=$!
    for i in $(seq 100); do
        [[ -s $ports ]] && break
        kill -0 "$GW_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    [[ -s $ports ]] || return 1
    read -r RTP_PORT API_PORT RTSP_PORT RTMP_PORT HTTP_PORT < <(python3 -c 'import json, sys
p = json.load(open(sys.argv[1]))
print(*((p.get(k) or ":-").rsplit(":", 1)[1] for k in ("rtp", "api", "rtsp", "rtmp", "http")))' "$ports")
}

cpu_ticks() { # pid -> utime+stime (all threads), in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

minor_faults() { # pid -> minor page faults so far (all threads)
    awk '{ sub(/^.*\) /, ""); print $8 }' "/proc/$1/stat"
}

# thread_ticks PID: one line per thread, "tid name ticks" (utime+stime), for a per-thread split of
# a window's CPU with thread_split.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*/stat; do
        awk '{ tid = $1; name = $0; sub(/^[^(]*\(/, "", name); sub(/\) .*$/, "", name)
               rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
               gsub(/[-_0-9]+$/, "", name); print tid, name, f[12] + f[13] }' "$t" 2>/dev/null
    done
}

# thread_split BEFORE AFTER SECONDS COUNT: from two thread_ticks snapshots, each thread group's
# (name without its trailing number) share of one core over the window, and per camera.
thread_split() {
    awk -v wall="$3" -v n="$4" -v hz="$(getconf CLK_TCK)" '
        NR == FNR { t0[$1] = $3; next }
        { d = $3 - ($1 in t0 ? t0[$1] : 0); g[$2] += d }
        END { for (k in g) if (g[k] > 0) printf "%s=%.1f%%(%.4f%%/camera) ", k, g[k] / hz / wall * 100,
              g[k] / hz / wall * 100 / (n > 0 ? n : 1) }' "$1" "$2"
}

# evict_page_cache FILE: drops FILE's pages from the page cache (D187). A binary just built or
# copied has all its pages cached, and each fault then maps more of it: its RSS reads higher.
evict_page_cache() {
    python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}
