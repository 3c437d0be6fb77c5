#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), one after another, on stable Rust
# (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z sanitizer flags). Logs to target/fuzz-logs/.
# Usage: tools/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(ps_demux rtp_parse tcp_framer rtsp_parse rtmp_chunk sip_parse sdp_parse manscdp_parse rtp_depack rtsp_client)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p target/fuzz-logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${secs}s"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) \
      > "target/fuzz-logs/$t.log" 2>&1 || { echo "$t FAILED: see target/fuzz-logs/$t.log"; tail -30 "target/fuzz-logs/$t.log"; exit 1; }
  grep -E "^(stat::number_of_executed_units|Done)|#[0-9]+.*DONE" "target/fuzz-logs/$t.log" | tail -2
done
