#!/usr/bin/python3
"""GStreamer's RTSP server (gst-rtsp-server, Debian gir1.2-gst-rtsp-server-1.0) for tests/rtsp_pull.rs.

Usage: rtsp_pull_gst_server.py USER PASSWORD PROTOCOLS SESSION_TIMEOUT [AUTH]
  PROTOCOLS: tcp, udp or any (the lower transports the server accepts; the other one gets 461).
  AUTH: digest (default) or basic.

Serves /test: H.264 (openh264enc, 1 s GOP) and AAC (voaacenc) from live test sources, behind
Digest (or Basic) authentication (RTSPAuth, that method only). Prints "port N" once listening, then one line
"rtcp PT SSRC" per RTCP packet it receives from a client (so the test can count our receiver
reports), "rb SSRC FRACTION LOST EXT_HIGHEST_SEQ JITTER LSR DLSR" per report block as GStreamer
parses it, "request METHOD" per OPTIONS and GET_PARAMETER (keep-alives), "teardown" per TEARDOWN. Exits when stdin closes.
"""
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtp, GstRtsp, GstRtspServer  # noqa: E402

Gst.init(None)
user, password, protocols, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
method = sys.argv[5] if len(sys.argv) > 5 else "digest"


_out = threading.Lock()


def say(*words):
    # RTCP arrives on one streaming thread per stream: whole lines only.
    line = " ".join(str(w) for w in words) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")

factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! openh264enc gop-size=25 ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 "
    "audiotestsrc is-live=true ! audio/x-raw,rate=44100,channels=1 ! audioconvert ! voaacenc "
    "! rtpmp4gpay name=pay1 pt=97 )"
)
factory.set_shared(True)
lower = {
    "tcp": GstRtsp.RTSPLowerTrans.TCP,
    "udp": GstRtsp.RTSPLowerTrans.UDP,
    "any": GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP,
}[protocols]
factory.set_protocols(lower)

auth = GstRtspServer.RTSPAuth()
token = GstRtspServer.RTSPToken()
token.set_string("media.factory.role", "user")
if method == "basic":
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
else:
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    auth.add_digest(user, password, token)
server.set_auth(auth)
permissions = GstRtspServer.RTSPPermissions()
permissions.add_role_from_structure(
    Gst.Structure.from_string("user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0]
)
factory.set_permissions(permissions)


def on_rtcp(_session, buf):
    # GStreamer's own RTCP parser on the report blocks (RFC 3550 6.4.2), so the test checks our
    # fields as a real receiver of them reads them.
    rtcp = GstRtp.RTCPBuffer()
    if GstRtp.RTCPBuffer.map(buf, Gst.MapFlags.READ, rtcp):
        packet = GstRtp.RTCPPacket()
        more = rtcp.get_first_packet(packet)
        while more:
            if packet.get_type() == GstRtp.RTCPType.RR:
                for i in range(packet.get_rb_count()):
                    say("rb", *packet.get_rb(i))
            more = packet.move_to_next()
        rtcp.unmap()
    ok, info = buf.map(Gst.MapFlags.READ)
    if ok:
        data = bytes(info.data)
        buf.unmap(info)
        # Every packet of the compound (RFC 3550 6.1): PT and sender SSRC.
        i = 0
        while i + 8 <= len(data):
            pt = data[i + 1]
            ssrc = int.from_bytes(data[i + 4 : i + 8], "big")
            say("rtcp", pt, "%08x" % ssrc)
            i += 4 * (int.from_bytes(data[i + 2 : i + 4], "big") + 1)


def on_prepared(media):
    for i in range(media.n_streams()):
        session = media.get_stream(i).get_rtpsession()
        if session is not None:
            session.connect("on-receiving-rtcp", on_rtcp)


def on_media(_factory, media):
    media.connect("prepared", on_prepared)


factory.connect("media-configure", on_media)
server.get_mount_points().add_factory("/test", factory)


def on_client(_server, client):
    def on_session(_client, session):
        session.set_timeout(timeout)

    client.connect("new-session", on_session)
    client.connect("teardown-request", lambda *_: say("teardown"))
    client.connect("get-parameter-request", lambda *_: say("request GET_PARAMETER"))
    client.connect("options-request", lambda *_: say("request OPTIONS"))


server.connect("client-connected", on_client)
server.attach(None)
say("port", server.get_bound_port())

loop = GLib.MainLoop()


def watch_stdin():
    sys.stdin.read()
    GLib.idle_add(loop.quit)


threading.Thread(target=watch_stdin, daemon=True).start()
loop.run()
