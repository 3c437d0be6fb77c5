#!/usr/bin/env bash
# What a gateway with one camera and N players is made of (issue 12, §13k): one fresh `gbgate run`
# (SIP and WebRTC off, as tools/fanout.sh), the tools/load.sh clip sent to it, N RTSP or RTMP
# players for WINDOW seconds. Prints the mean VmRSS and RssAnon over 8 one-second samples near
# the window's end, then /proc/PID/status (RssAnon/RssFile, threads) and /proc/PID/smaps summed
# per mapping (resident kB, anonymous kB, mapped kB) at the end of the window.
#
#   BIN=/work/gbgate-46749a9 PROTO=rtsp PLAYERS=300 tools/rss.sh
#   ENVS="_RJEM_MALLOC_CONF=percpu_arena:percpu" PROTO=rtmp tools/rss.sh    # allocator variants
#
# The binary's page-cache pages are evicted first (EVICT=0 keeps them): a freshly copied binary
# reads 1.5-1.9 MB more RssFile than one read in by exec (D187), which would swamp a comparison.
# Env: BIN (target/release/gbgate), SEND_BIN (= BIN, sender and players), PROTO (rtsp|rtmp),
#      PLAYERS (300), WINDOW (16 s, at least 12), MERGE (200ms), ENVS, EVICT (1).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release/gbgate}
SEND_BIN=${SEND_BIN:-$BIN}
PROTO=${PROTO:-rtsp}
PLAYERS=${PLAYERS:-300}
WINDOW=${WINDOW:-16}
MERGE=${MERGE:-200ms}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
[[ -s $CLIP ]] || PHASES="" tools/load.sh   # makes the clip without a load phase
((WINDOW >= 12)) || { echo "WINDOW must be at least 12" >&2; exit 2; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
[[ ${EVICT:-1} != 1 ]] || evict_page_cache "$BIN"
cfg=$LOAD_DIR/rss.toml
write_fanout_config "$cfg" "$MERGE"
# shellcheck disable=SC2086 # ENVS is a list of NAME=VALUE words
start_gbgate "$BIN" "$cfg" "$LOAD_DIR/rss.log" ${ENVS:-} || { echo "gbgate did not start: $LOAD_DIR/rss.log" >&2; exit 1; }
gw=$GW_PID; PIDS+=("$gw")
rtp=$RTP_PORT rtsp=$RTSP_PORT rtmp=$RTMP_PORT
"$SEND_BIN" send "$CLIP" --to "127.0.0.1:$rtp" --ssrc 0100000001 --loop 100 --duration "$((WINDOW + 20))s" >/dev/null &
PIDS+=("$!")
sleep 3
case $PROTO in
    rtmp) url="rtmp://127.0.0.1:$rtmp/rtp/05F5E101" ;;
    *) url="rtsp://127.0.0.1:$rtsp/rtp/05F5E101" ;;
esac
"$SEND_BIN" players "$url" --count "$PLAYERS" --duration "${WINDOW}s" >"$LOAD_DIR/rss-players.txt" &
pl=$!
sleep $((WINDOW - 11))
sa=0 sr=0
for _ in 1 2 3 4 5 6 7 8; do
    sleep 1
    sa=$((sa + $(awk '/^RssAnon/ { print $2 }' "/proc/$gw/status")))
    sr=$((sr + $(awk '/^VmRSS/ { print $2 }' "/proc/$gw/status")))
done
echo "== $PLAYERS ${PROTO^^} players, $BIN ${ENVS:-}: mean RSS $(awk -v k=$sr 'BEGIN { printf "%.1f", k / 8 / 1024 }') MB, anonymous $(awk -v k=$sa 'BEGIN { printf "%.1f", k / 8 / 1024 }') MB"
grep -E '^(VmRSS|RssAnon|RssFile|RssShmem|Threads)' "/proc/$gw/status" | tr -s ' \t' ' ' | paste -sd ' '
echo "threads: $(cat /proc/"$gw"/task/*/comm | sort | uniq -c | awk '{ printf "%s x%s, ", $2, $1 }')"
python3 - "/proc/$gw/smaps" <<'PY'
import collections, re, sys
agg = collections.defaultdict(lambda: [0, 0, 0])
cur = None
for line in open(sys.argv[1]):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        p = line.split(None, 5)
        lo, hi = (int(x, 16) for x in p[0].split("-"))
        cur = agg[((p[5].strip().rsplit("/", 1)[-1] if len(p) > 5 else "") or "[anon]", p[1])]
        cur[2] += (hi - lo) // 1024
    elif line.startswith(("Rss:", "Anonymous:")):
        cur[0 if line.startswith("Rss:") else 1] += int(line.split()[1])
print(f"{'mapping':28} {'perm':5} {'rss kB':>8} {'anon kB':>8} {'size kB':>9}")
for (name, perm), (rss, anon, size) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
    if rss >= 16:
        print(f"{name:28} {perm:5} {rss:8} {anon:8} {size:9}")
PY
wait "$pl" || true
tail -2 "$LOAD_DIR/rss-players.txt" | sed 's/^/   /'
