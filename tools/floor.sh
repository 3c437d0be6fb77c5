#!/usr/bin/env bash
# The fan-out floor next to gbgate (issue 12, D176): per round and protocol, `gbgate floor` (one
# thread writing each video frame of the tools/load.sh clip to N loopback connections with one
# writev each, in gbgate's RTSP/RTMP byte and iovec shape, drained by a second process), then
# tools/fanout.sh with gbgate at `merge_write = "0s"` and N players, alternating, fresh processes.
# Prints both CPU figures and gbgate's user-space overhead above the floor (G - F).
#
#   PROTOS="rtsp rtmp" CONNECTIONS=300 WINDOW=15 ROUNDS=2 [BIN=...] [FLOOR_BIN=...] tools/floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOS=${PROTOS:-"rtsp rtmp"}
CONNECTIONS=${CONNECTIONS:-300}
WINDOW=${WINDOW:-15}
ROUNDS=${ROUNDS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
LOAD_DIR=${LOAD_DIR:-$TARGET/load}
BIN=${BIN:-$TARGET/release/gbgate}
FLOOR_BIN=${FLOOR_BIN:-$BIN}   # the floor subcommand is new: an older BIN needs FLOOR_BIN
CLIP=$LOAD_DIR/cam720p_2m_g711a.rtp
[[ -s $CLIP ]] || PHASES="" tools/load.sh
[[ $BIN != "$TARGET/release/gbgate" ]] || cargo build --release -q --bins
for r in $(seq "$ROUNDS"); do
    for proto in $PROTOS; do
        f=$("$FLOOR_BIN" floor "$CLIP" --proto "$proto" --connections "$CONNECTIONS" --duration "${WINDOW}s")
        echo "$f"
        fl=$(sed -n 's/.*writer CPU \([0-9.]*\) %.*/\1/p' <<<"$f" | head -1)
        g=$(PROTO=$proto MERGE=0s PLAYERS=$CONNECTIONS WINDOW=$WINDOW BIN=$BIN tools/fanout.sh)
        echo "$g"
        gb=$(sed -n 's/.*gbgate CPU \([0-9.]*\)%.*/\1/p' <<<"$g" | head -1)
        echo "## round $r ${proto^^} x$CONNECTIONS, load $(cut -d' ' -f1-3 /proc/loadavg): floor F=${fl}%  gbgate G=${gb}%  G-F=$(awk -v a="$gb" -v b="$fl" 'BEGIN{printf "%.1f", a-b}')%  G/F=$(awk -v a="$gb" -v b="$fl" 'BEGIN{printf "%.2f", a/b}')"
    done
done
