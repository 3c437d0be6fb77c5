//! gbgate's integration tests, in one test binary (D196): each module is one area (tests/<area>.rs)
//! and talks to gbgate over real sockets with real peers. One binary links the library once
//! instead of once per file: on a fresh CI machine the 50 binaries of ~125 MB each took 6 GB of
//! disk and most of the link time. The tests that measure this process's own memory or file
//! descriptors (relay, ingest_memory, rtp_probation_memory) stay binaries of their own, so no
//! other test runs beside them in their process.
mod common;

mod api;
mod attack;
mod audio;
mod callbacks;
mod channels;
mod cli;
mod console;
mod fanout_direct;
mod gateway;
mod gb;
mod gb_hostile;
mod gb_on_demand;
mod gb_replay;
mod gb_robust;
mod gb_rtcp;
mod gb_sessions;
mod gop_policy;
mod hls;
mod http_flv;
mod join_tools;
mod layering;
mod metrics;
mod openapi;
mod ops;
mod ps_fixtures;
mod push;
mod readers;
mod record;
mod rtmp;
mod rtmp_hostile;
mod rtmp_load;
mod rtmp_publish;
mod rtp_fixtures;
mod rtp_spoof;
mod rtp_squat;
mod rtp_takeover;
mod rtp_tcp_slow;
mod rtp_udp_batch;
mod rtsp;
mod rtsp_ingest;
mod rtsp_load;
mod rtsp_pull;
mod sip_tcp_limits;
mod streamlog;
mod whep;

/// The harness's `listening`, which tests use to see a peer process (ffmpeg, VLC) come up on a
/// port chosen for it, counts other processes' listeners only: a gateway of a test running
/// beside it in this process may have been given the same port meanwhile.
#[tokio::test]
async fn harness_listening_sees_other_processes_only() {
    let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = ours.local_addr().unwrap().port();
    assert!(!common::listening(port), "this process's own listener counted as a peer's");
    drop(ours);
    // The peer binds port 0 and says which port it got: no port chosen here and bound later.
    let mut peer = std::process::Command::new("python3")
        .args(["-c", "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(peer.stdout.take().expect("piped")), &mut line)
        .expect("the peer's port");
    let port: u16 = line.trim().parse().expect("a port number");
    let seen = common::wait_listening(port, std::time::Duration::from_secs(10)).await;
    let _ = peer.kill();
    let _ = peer.wait();
    assert!(seen, "another process's listener on {port} not seen");
}
