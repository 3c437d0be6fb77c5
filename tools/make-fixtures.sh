#!/usr/bin/env bash
# Regenerates fixtures/ (gbgate's own GB28181 PS/RTP fixtures) deterministically:
# ffmpeg makes small elementary streams, examples/mkfixtures.rs muxes them with gbgate's PsMuxer,
# and the expected values in fixtures/expected.json + README.md are measured here, never typed.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=fixtures
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

FF=(ffmpeg -hide_banner -loglevel error -nostdin -y)
# Bit-exact, metadata-free, single-threaded encoders: two runs give identical bytes.
EXACT=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1)
X264=(-c:v libx264 -preset medium -pix_fmt yuv420p -g 25 -keyint_min 25 -sc_threshold 0 -bf 0
      -bsf:v h264_metadata=aud=insert)
X265=(-c:v libx265 -pix_fmt yuv420p -bsf:v hevc_metadata=aud=insert)
X265P="keyint=25:min-keyint=25:bframes=0:scenecut=0:pools=none:frame-threads=1:log-level=error"

video() { # name size codec extra-args... -> $WORK/name.es
    local name=$1 size=$2 codec=$3
    shift 3
    local fmt=h264 args=("${X264[@]}")
    [[ $codec == h265 ]] && fmt=hevc && args=("${X265[@]}")
    "${FF[@]}" -f lavfi -i "testsrc2=size=$size:rate=25" -t 2 -an "${args[@]}" "$@" "${EXACT[@]}" \
        -f "$fmt" "$WORK/$name.es"
}

audio() { # name codec rate -> $WORK/name.audio
    local name=$1 codec=$2 rate=$3 enc
    case $codec in
        g711a) enc=(-f alaw) ;;
        g711u) enc=(-f mulaw) ;;
        aac) enc=(-c:a aac -b:a 32k -f adts) ;;
    esac
    "${FF[@]}" -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=$rate:duration=2" \
        -ar "$rate" -ac 1 "${EXACT[@]}" "${enc[@]}" "$WORK/$name.audio"
}

probe_video() { # es -> "codec,width,height,frames,keyframes"
    local s k
    s=$(ffprobe -v error -count_frames -select_streams v:0 \
        -show_entries stream=codec_name,width,height,nb_read_frames -of csv=p=0 "$1")
    k=$(ffprobe -v error -select_streams v:0 -show_entries frame=key_frame -of csv=p=0 "$1" | grep -c '^1' || true)
    echo "${s%%[[:space:]]},$k"
}

cargo build --release --example mkfixtures
MK=("${CARGO_TARGET_DIR:-target}/release/examples/mkfixtures")

mkdir -p "$OUT"
STATS=()
fixture() { # name vcodec size audio-codec rate ssrc [x264/x265 extra args...]
    local name=$1 vc=$2 size=$3 ac=$4 rate=$5 ssrc=$6
    shift 6
    video "$name" "$size" "$vc" "$@"
    audio "$name" "$ac" "$rate"
    local probe
    probe=$(probe_video "$WORK/$name.es")
    "${MK[@]}" mux --name "$name" --out-dir "$OUT" --stats "$WORK/$name.json" --ssrc "$ssrc" \
        --video-codec "$vc" --video "$WORK/$name.es" --video-probe "$probe" \
        --audio-codec "$ac" --audio "$WORK/$name.audio" --sample-rate "$rate"
    # Sanity: ffmpeg's own PS demuxer must find every video frame in what we muxed.
    local n want=${probe#*,*,*,}
    want=${want%,*}
    n=$(ffprobe -v quiet -f mpeg -count_frames -select_streams v:0 -show_entries stream=nb_read_frames \
        -of csv=p=0 "$OUT/$name.ps" | tr -d '[:space:],')
    [[ $n == "$want" ]] || { echo "ffprobe reads $n video frames from $OUT/$name.ps, expected $want" >&2; exit 1; }
    STATS+=("$WORK/$name.json")
}

fixture h264_g711a_8k  h264 352x288  g711a 8000  0200000001 -crf 30 -x264-params threads=1
fixture h265_aac_16k   h265 352x288  aac   16000 0200000002 -crf 32 -x265-params "$X265P"
# One big keyframe (QP 1, > 65000 bytes) to exercise PES splitting.
fixture h264_g711u_16k h264 1280x720 g711u 16000 0200000003 -crf 38 -x264-params threads=1:zones=0,0,q=1
fixture h265_g711a_8k  h265 352x288  g711a 8000  0200000004 -crf 32 -x265-params "$X265P"

"${MK[@]}" summarize --out-dir "$OUT" "${STATS[@]}"
(cd "$OUT" && md5sum ./*.ps ./*.rtp expected.json README.md | sed 's| \./| |' > MD5SUMS)
ls -l "$OUT"
