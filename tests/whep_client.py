#!/usr/bin/python3
"""A WHEP player built on aiortc (a WebRTC stack we did not write), for tests/whep.rs.

POSTs an SDP offer (recvonly video + audio) to the WHEP URL, decodes what arrives, and prints one
JSON line with what it saw: decoded video frames (size, how many distinct pictures), audio frames,
the time from the POST to the first decoded video frame, the answer's status and Location.

--then delete   DELETE the resource after the frames arrived, then linger (to let the test see
                the player count drop while this peer is still alive)
--then vanish   exit at once without DELETE or closing (a peer that vanished)
--then close    close the peer connection politely (default)
"""
import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

from aiortc import RTCPeerConnection, RTCSessionDescription


def http(method, url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--video-frames", type=int, default=50)
    ap.add_argument("--audio-frames", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--then", default="close", choices=["close", "delete", "vanish"])
    ap.add_argument("--linger", type=float, default=0)
    ap.add_argument("--offer-only", action="store_true", help="print the status of the POST and stop")
    a = ap.parse_args()

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    out = {"video_frames": 0, "audio_frames": 0, "sizes": [], "distinct": 0, "first_frame_ms": None,
           "audio_rate": None, "audio_codec": None, "video_codec": None}
    seen = set()
    done_video = asyncio.Event()
    done_audio = asyncio.Event()
    t0 = [0.0]
    if a.audio_frames <= 0:
        done_audio.set()

    async def read_video(track):
        while True:
            try:
                f = await track.recv()
            except Exception:
                return
            if out["video_frames"] == 0:
                out["first_frame_ms"] = round((time.monotonic() - t0[0]) * 1000, 1)
            out["video_frames"] += 1
            size = [f.width, f.height]
            if size not in out["sizes"]:
                out["sizes"].append(size)
            seen.add(hashlib.md5(bytes(f.planes[0])).hexdigest())
            out["distinct"] = len(seen)
            if out["video_frames"] >= a.video_frames:
                done_video.set()

    async def read_audio(track):
        while True:
            try:
                f = await track.recv()
            except Exception:
                return
            out["audio_frames"] += 1
            out["audio_rate"] = f.sample_rate
            if out["audio_frames"] >= a.audio_frames:
                done_audio.set()

    @pc.on("track")
    def on_track(track):
        if track.kind == "video":
            asyncio.ensure_future(read_video(track))
        else:
            asyncio.ensure_future(read_audio(track))

    await pc.setLocalDescription(await pc.createOffer())
    t0[0] = time.monotonic()
    loop = asyncio.get_running_loop()
    status, headers, body = await loop.run_in_executor(
        None, http, "POST", a.url, pc.localDescription.sdp.encode(), "application/sdp")
    out["status"] = status
    out["location"] = headers.get("Location") or headers.get("location")
    if status != 201:
        out["body"] = body
        print(json.dumps(out), flush=True)
        await pc.close()
        return
    out["post_ms"] = round((time.monotonic() - t0[0]) * 1000, 1)
    if a.offer_only:
        print(json.dumps(out), flush=True)
        os._exit(0)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    for t in pc.getTransceivers():
        codecs = [c.mimeType for c in (t._codecs or [])]
        out[t.kind + "_codec"] = codecs[0] if codecs else None
    try:
        await asyncio.wait_for(asyncio.gather(done_video.wait(), done_audio.wait()), a.timeout)
    except asyncio.TimeoutError:
        out["timed_out"] = True
    out["ice"] = pc.iceConnectionState
    if a.then == "vanish":
        print(json.dumps(out), flush=True)
        os._exit(0)
    if a.then == "delete":
        base = a.url.split("/", 3)
        url = "/".join(base[:3]) + out["location"]
        st, _, _ = await loop.run_in_executor(None, http, "DELETE", url)
        out["delete_status"] = st
        st2, _, _ = await loop.run_in_executor(None, http, "DELETE", url)
        out["second_delete_status"] = st2
        print(json.dumps(out), flush=True)
        await asyncio.sleep(a.linger)
        os._exit(0)
    print(json.dumps(out), flush=True)
    await pc.close()


if __name__ == "__main__":
    asyncio.run(main())
