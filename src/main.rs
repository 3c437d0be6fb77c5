//! The gbgate command line: `run`, `check-config`, `probe`, `send`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gbgate::config::Config;
use gbgate::server::Gateway;
use tracing_subscriber::EnvFilter;

mod code_pages;

/// jemalloc returns memory after a burst where glibc's malloc kept it (D160, measured in
/// docs/performance.md §13c).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "gbgate", version, about = "GB/T 28181 media gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file. Default: conf/gbgate.toml when present, else built-in defaults.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Once every listener is bound, write the bound addresses here as JSON
        /// (`{"rtp":"127.0.0.1:10000","api":…,"rtsp":…,"rtmp":…,"http":…,"sip":…}`): ports 0 in the config
        /// are then usable by scripts and tests.
        #[arg(long)]
        ports_file: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig { file: PathBuf },
    /// Tell what is in a capture: raw PS, RTP dump ([u16 len][RTP]), rtpdump, pcap or pcapng.
    Probe {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Replay the RTP of a capture to a gateway as one or many cameras.
    Send {
        file: PathBuf,
        /// Where to send, e.g. 127.0.0.1:10000.
        #[arg(long, default_value = "127.0.0.1:10000")]
        to: std::net::SocketAddr,
        /// Use TCP (RFC 4571 framing) instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Number of cameras.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// SSRC of the first camera, decimal (GB form, e.g. 0100000001); camera i uses base + i.
        #[arg(long)]
        ssrc: Option<u32>,
        /// Replay the capture this many times.
        #[arg(long = "loop", default_value_t = 1)]
        loops: u32,
        /// Stop after this long, e.g. "60s".
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// As fast as possible instead of in real time.
        #[arg(long)]
        flood: bool,
        /// Keep TCP connections open this long after the last packet, e.g. "5s".
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        linger: Duration,
    },
    /// Open many RTSP (TCP interleaved), RTMP or HTTP-FLV (`http://ip:port/<stream>.flv`) players on a
    /// URL and report what each received.
    Players {
        url: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        /// Extra players that stop reading after PLAY (they must not slow the others).
        #[arg(long, default_value_t = 0)]
        stall: usize,
        /// Measure joins instead: this many players one after another, each from TCP connect to
        /// its first video keyframe packet (at most --duration each); prints p50/p99/max.
        #[arg(long, default_value_t = 0)]
        joins: usize,
        /// One player per camera: player i plays the stream numbered i after the URL's (its name's
        /// trailing hex number + i, e.g. rtp/05F5E101, rtp/05F5E102, ... as `gbgate send --count`).
        #[arg(long)]
        spread: bool,
    },
    /// Measure the added latency, frame in -> frame out: send N cameras of a clip to a running
    /// gateway and play the first M over RTSP, in one process; prints p50/p99/max.
    Latency {
        /// The clip (an RTP dump made like tools/load.sh's).
        file: PathBuf,
        /// The gateway's RTP port.
        #[arg(long, default_value = "127.0.0.1:10000")]
        rtp: std::net::SocketAddr,
        /// The gateway's RTSP listener.
        #[arg(long, default_value = "127.0.0.1:8554")]
        rtsp: std::net::SocketAddr,
        /// Send over TCP (RFC 4571) instead of UDP.
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 1)]
        cameras: usize,
        /// Players, one each on the first M cameras.
        #[arg(long, default_value_t = 1)]
        players: usize,
        /// SSRC of the first camera, decimal (GB form); camera i uses base + i.
        #[arg(long, default_value_t = 100_000_001)]
        ssrc: u32,
        /// How long the players measure.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
        duration: Duration,
        /// Cameras alone before the players start.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        warmup: Duration,
    },
    /// The fan-out floor (issue 12): one thread writing each video frame of a clip to N loopback
    /// TCP connections with one `writev` each, in gbgate's RTSP or RTMP shape, nothing else; the
    /// readers are a second process that drains. Prints this process's CPU.
    #[command(hide = true)]
    Floor {
        /// The clip (an RTP dump made like tools/load.sh's). Not needed with --drain.
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "rtsp")]
        proto: gbgate::sim::floor::FloorProto,
        #[arg(long, default_value_t = 300)]
        connections: usize,
        /// The measured window.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        warmup: Duration,
        #[arg(long, default_value_t = 1400)]
        max_payload: usize,
        /// Be the draining side: connect --connections times to this address and read.
        #[arg(long)]
        drain: Option<std::net::SocketAddr>,
    },
    /// Replay the hostile inputs of issue #8 against a running gateway while a legitimate camera
    /// streams and a player plays; prints what each attack saw, the player's frames, and the
    /// gateway's memory and file descriptors (with --pid) as JSON.
    Attack {
        #[arg(long, default_value = "127.0.0.1:10000")]
        rtp: std::net::SocketAddr,
        #[arg(long)]
        rtsp: Option<std::net::SocketAddr>,
        #[arg(long)]
        rtmp: Option<std::net::SocketAddr>,
        #[arg(long)]
        sip: Option<std::net::SocketAddr>,
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// Source address of the attacks (any 127/8 address stands for another host).
        #[arg(long, default_value = "127.0.0.2")]
        attacker_ip: std::net::IpAddr,
        /// Source address of the legitimate camera.
        #[arg(long, default_value = "127.0.0.1")]
        camera_ip: std::net::IpAddr,
        /// The legitimate camera's SSRC (decimal GB form).
        #[arg(long, default_value_t = 100_000_001)]
        victim_ssrc: u32,
        /// A registered device for the forged SIP requests.
        #[arg(long)]
        victim_device: Option<String>,
        /// The gateway's SIP password (the flood attacks use valid digests).
        #[arg(long)]
        sip_password: Option<String>,
        #[arg(long, default_value = "34020000002000000001")]
        server_id: String,
        /// Only these attacks (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<gbgate::sim::attack::Attack>,
        /// Scales every count (1.0 = the figures of issue #8).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// How long connection-holding attacks hold their connections.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
        hold: Duration,
        /// How long the legitimate player plays (the attacks run inside this window).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
        play_for: Duration,
        /// The gateway's process id, to read its RSS and open file descriptors.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        settle: Duration,
    },
    /// Simulate GB28181 cameras: register (digest), keepalive, answer queries, PTZ and INVITEs
    /// (UDP, TCP passive, TCP active) with PS over RTP from a capture; Ctrl-C unregisters them.
    Sim {
        /// The gateway's SIP address.
        #[arg(long, default_value = "127.0.0.1:5060")]
        server: std::net::SocketAddr,
        /// The gateway's 20-digit ID and the domain.
        #[arg(long, default_value = "34020000002000000001")]
        server_id: String,
        #[arg(long, default_value = "3402000000")]
        domain: String,
        #[arg(long, default_value = "12345678")]
        password: String,
        /// Number of cameras; camera i uses ID `--id` + i.
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "34020000001320000001")]
        id: String,
        /// Channels per camera (reported in the catalog).
        #[arg(long, default_value_t = 1)]
        channels: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        keepalive: Duration,
        #[arg(long, default_value_t = 3600)]
        expires: u32,
        /// RTP capture streamed on INVITE (RTP dump, rtpdump or pcap), or `synthetic` for moving
        /// colour bars (H.264 I_PCM, 128x96) muxed by gbgate's own PS muxer.
        #[arg(long, default_value = "fixtures/h264_g711a_8k.rtp")]
        media: PathBuf,
        /// Mimic a vendor: hikvision (own SSRC in the answer), dahua (SSRC 0).
        #[arg(long, value_enum, default_value = "none")]
        quirk: gbgate::sim::camera::Quirk,
        /// Chinese channel names, GB2312-encoded.
        #[arg(long)]
        gb2312: bool,
        /// Local IP the cameras bind and announce.
        #[arg(long, default_value = "127.0.0.1")]
        local_ip: std::net::IpAddr,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, ports_file } => run(config, ports_file),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                println!("# {}: valid. Effective configuration:", file.display());
                match toml::to_string_pretty(&cfg) {
                    Ok(text) => print!("{text}"),
                    Err(e) => eprintln!("cannot print the configuration: {e}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Probe { file, json } => match gbgate::probe::report::probe_file(&file) {
            Ok(report) => {
                if json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    print!("{}", gbgate::probe::report::render_text(&report));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Players { url, count, duration, stall, joins, spread } => {
            players(url, count, duration, stall, joins, spread)
        }
        Command::Floor { file, proto, connections, duration, warmup, max_payload, drain } => {
            floor(file, proto, connections, duration, warmup, max_payload, drain)
        }
        Command::Latency { file, rtp, rtsp, tcp, cameras, players, ssrc, duration, warmup } => {
            let opts = gbgate::sim::latency::LatencyOptions {
                rtp,
                rtsp,
                tcp,
                cameras,
                players,
                ssrc_base: ssrc,
                duration,
                warmup,
            };
            latency(&file, &opts)
        }
        Command::Attack {
            rtp,
            rtsp,
            rtmp,
            sip,
            api,
            attacker_ip,
            camera_ip,
            victim_ssrc,
            victim_device,
            sip_password,
            server_id,
            only,
            scale,
            hold,
            play_for,
            pid,
            settle,
        } => {
            let target = gbgate::sim::attack::AttackTarget {
                rtp,
                rtsp,
                rtmp,
                sip,
                api,
                attacker_ip,
                victim_ssrc,
                victim_device,
                sip_password,
                server_id,
                scale,
                hold,
            };
            let attacks = if only.is_empty() { gbgate::sim::attack::Attack::ALL.to_vec() } else { only };
            let opts = gbgate::sim::attack::CampaignOptions { attacks, camera_ip, play_for, pid, settle };
            attack(target, opts)
        }
        Command::Sim {
            server,
            server_id,
            domain,
            password,
            count,
            id,
            channels,
            keepalive,
            expires,
            media,
            quirk,
            gb2312,
            local_ip,
            duration,
        } => {
            let mut opts = gbgate::sim::camera::SimOptions::new(server, media);
            opts.server_id = server_id;
            opts.domain = domain;
            opts.password = password;
            opts.count = count;
            opts.first_id = id;
            opts.channels = channels;
            opts.keepalive = keepalive;
            opts.expires = expires;
            opts.quirk = quirk;
            opts.gb2312_names = gb2312;
            opts.local_ip = local_ip;
            sim(opts, duration)
        }
        Command::Send { file, to, tcp, count, ssrc, loops, duration, flood, linger } => {
            if count > 1 && ssrc.is_none() {
                eprintln!("error: --count above 1 needs --ssrc (each camera needs its own SSRC)");
                return ExitCode::from(2);
            }
            let opts =
                gbgate::sim::send::SendOptions { to, tcp, count, ssrc_base: ssrc, loops, duration, flood, linger };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(gbgate::sim::send::send_file(&file, &opts)) {
                Ok(r) => {
                    println!(
                        "sent {} packets, {} bytes in {:.3} s ({:.1} Mbit/s), latest packet {:.1} ms behind schedule",
                        r.packets,
                        r.bytes,
                        r.elapsed.as_secs_f64(),
                        r.bytes as f64 * 8.0 / r.elapsed.as_secs_f64().max(1e-6) / 1e6,
                        r.max_late.as_secs_f64() * 1e3
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn sim(opts: gbgate::sim::camera::SimOptions, duration: Option<Duration>) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let count = opts.count;
        let stats = match gbgate::sim::camera::spawn(opts, stop.clone()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown_signal() => {}
                }
            }
            None => shutdown_signal().await,
        }
        stop.cancel();
        // Let the cameras send their unregister.
        tokio::time::sleep(Duration::from_millis(300)).await;
        use gbgate::sim::camera::SimStats as S;
        println!(
            "cameras {count} registered {} keepalives {} invites {} byes {} media packets {} ptz {}",
            S::get(&stats.registered),
            S::get(&stats.keepalives),
            S::get(&stats.invites),
            S::get(&stats.byes_received),
            S::get(&stats.media_packets),
            S::get(&stats.ptz)
        );
        ExitCode::SUCCESS
    })
}

fn attack(target: gbgate::sim::attack::AttackTarget, opts: gbgate::sim::attack::CampaignOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(gbgate::sim::attack::campaign(&target, &opts));
    match serde_json::to_string_pretty(&report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot print the report: {e}"),
    }
    let legit = &report.legit;
    let lost_frames = legit.frames_expected.saturating_sub(legit.video_frames);
    eprintln!(
        "gateway alive: {}; legit player: {} of ~{} frames, {} sequence gaps{}",
        report.alive,
        legit.video_frames,
        legit.frames_expected,
        legit.video_seq_gaps,
        legit.player_error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default()
    );
    if !report.alive || legit.video_seq_gaps > 0 || legit.closed_early || lost_frames > 2 * 25 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn players(url: String, count: usize, duration: Duration, stall: usize, joins: usize, spread: bool) -> ExitCode {
    let opts = gbgate::sim::players::PlayersOptions { url, count, duration, stall };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        match joins {
            0 => gbgate::sim::players::run_players_spread(&opts, spread).await,
            n => gbgate::sim::players::run_joins(&opts.url, n, opts.duration).await,
        }
    };
    let report = match runtime.block_on(run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ok: Vec<_> = report.players.iter().filter(|p| p.error.is_none()).collect();
    let mut frames: Vec<u64> = ok.iter().map(|p| p.video_frames).collect();
    frames.sort_unstable();
    let mut firsts: Vec<Duration> = ok.iter().filter_map(|p| p.first_video).collect();
    firsts.sort_unstable();
    let pct =
        |v: &[Duration], q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    println!("players {} ok {} errors {}", report.players.len(), ok.len(), report.players.len() - ok.len());
    if let Some(e) = report.players.iter().find_map(|p| p.error.as_ref()) {
        println!("first error: {e}");
    }
    if joins > 0 {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let summary = |mut v: Vec<Duration>| {
            v.sort_unstable();
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} joins)",
                ms(pct(&v, 0.5)),
                ms(pct(&v, 0.99)),
                ms(v.last().copied().unwrap_or_default()),
                v.len()
            )
        };
        println!("connect to first video keyframe packet: {}", summary(ok.iter().filter_map(|p| p.join).collect()));
        let describes: Vec<Duration> = ok.iter().filter_map(|p| p.describe).collect();
        if !describes.is_empty() {
            println!("DESCRIBE answered: {}", summary(describes));
        }
        // Where the slowest joins spent their time (the tail's profile, per phase).
        let mut slow: Vec<_> = ok.iter().filter(|p| p.join.is_some()).collect();
        slow.sort_by_key(|p| std::cmp::Reverse(p.join));
        for p in slow.iter().take(3) {
            let (join, describe, first) =
                (p.join.unwrap_or_default(), p.describe.unwrap_or_default(), p.first_video.unwrap_or_default());
            println!(
                "slow join {:.3} ms: DESCRIBE {:.3} ms, request to first video {:.3} ms, the rest (connect, SETUP) {:.3} ms",
                ms(join),
                ms(describe),
                ms(first),
                ms(join.saturating_sub(describe).saturating_sub(first))
            );
        }
        println!(
            "first packet is a keyframe for {} of {}; no video for {}",
            ok.iter().filter(|p| p.first_is_key).count(),
            ok.len(),
            ok.iter().filter(|p| p.join.is_none()).count()
        );
        return match ok.len() == joins && ok.iter().all(|p| p.join.is_some()) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    println!(
        "video frames per player: min {} median {} max {}",
        frames.first().copied().unwrap_or(0),
        frames.get(frames.len() / 2).copied().unwrap_or(0),
        frames.last().copied().unwrap_or(0)
    );
    println!(
        "PLAY to first video packet (RTMP, HTTP-FLV: keyframe): median {:.3} ms, p99 {:.3} ms; first packet is a keyframe for {} of {}",
        pct(&firsts, 0.5).as_secs_f64() * 1000.0,
        pct(&firsts, 0.99).as_secs_f64() * 1000.0,
        ok.iter().filter(|p| p.first_is_key).count(),
        ok.len()
    );
    println!(
        "closed early: {}; video sequence gaps (packets missed) summed over players: {}; \
         video timestamp regressions (RTMP, HTTP-FLV): {}",
        ok.iter().filter(|p| p.closed_early).count(),
        ok.iter().map(|p| p.video_seq_gaps).sum::<u64>(),
        ok.iter().map(|p| p.video_ts_regressions).sum::<u64>()
    );
    if report.stalled > 0 {
        println!("stalled players disconnected by the server: {} of {}", report.stalled_disconnected, report.stalled);
    }
    ExitCode::SUCCESS
}

fn floor(
    file: Option<PathBuf>,
    proto: gbgate::sim::floor::FloorProto,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    max_payload: usize,
    drain: Option<std::net::SocketAddr>,
) -> ExitCode {
    if let Some(to) = drain {
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runtime.block_on(gbgate::sim::floor::run_drain(to, connections)) {
            Ok(n) => {
                println!("{n}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(file) = file else {
        eprintln!("error: the clip is needed");
        return ExitCode::from(2);
    };
    let opts = gbgate::sim::floor::FloorOptions { proto, connections, duration, warmup, max_payload };
    let r = match gbgate::sim::floor::run_floor(&file, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let secs = r.window.as_secs_f64().max(1e-3);
    println!(
        "floor {:?}: {} connections, {:.1} s: writer CPU {:.1} % of one core (schedstat {:.2} %), drain process {:.1} %",
        proto, r.connections, secs, r.cpu_pct, r.cpu_pct_ns, r.drain_cpu_pct
    );
    println!(
        "   {} frames per connection, {:.0} writev/s, {:.2} writev per frame and connection, {:.2} Mbit/s per connection; drained {} of {} bytes",
        r.frames,
        r.writevs as f64 / secs,
        r.writevs as f64 / (r.frames.max(1) * r.connections.max(1) as u64) as f64,
        r.bytes as f64 * 8.0 / secs / 1e6 / r.connections.max(1) as f64,
        r.drained,
        r.written
    );
    if r.drained != r.written {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn latency(file: &Path, opts: &gbgate::sim::latency::LatencyOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(gbgate::sim::latency::run_latency(file, opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "cameras {} ({}), players {} ok {}, packets sent {}, recognisable frames in the clip {}",
        opts.cameras,
        if opts.tcp { "TCP" } else { "UDP" },
        opts.players,
        report.players_ok,
        report.packets_sent,
        report.known_frames
    );
    if let Some(e) = report.errors.first() {
        println!("first error ({} players failed): {e}", report.errors.len());
    }
    println!("sender: latest packet {:.1} ms after its due time", ms(report.sender_late_max));
    println!(
        "frame in -> frame out: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} frames ({} unmatched)",
        ms(report.percentile(0.5)),
        ms(report.percentile(0.99)),
        ms(report.samples.last().copied().unwrap_or_default()),
        report.samples.len(),
        report.unmatched
    );
    match report.samples.is_empty() || !report.errors.is_empty() {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    }
}

fn load_config(path: Option<PathBuf>) -> Result<(Config, String), String> {
    match path {
        Some(p) => Config::load(&p).map(|c| (c, p.display().to_string())).map_err(|e| e.to_string()),
        None => {
            let default = Path::new("conf/gbgate.toml");
            if default.exists() {
                Config::load(default).map(|c| (c, default.display().to_string())).map_err(|e| e.to_string())
            } else {
                Ok((Config::default(), "built-in defaults".to_string()))
            }
        }
    }
}

fn run(config: Option<PathBuf>, ports_file: Option<PathBuf>) -> ExitCode {
    // The runtime and the signal handlers come first, before the config is read and anything
    // starts (D110): a SIGTERM during start-up then waits in the handler and stops the gateway
    // gracefully once it runs, instead of the default action killing the process (a SIGHUP's
    // default action is to die too).
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = {
        let _rt = runtime.enter();
        match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install the signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    // The file a SIGHUP re-reads: the one given, or conf/gbgate.toml when it was used.
    let reload_path = config.clone().or_else(|| Some(PathBuf::from("conf/gbgate.toml")).filter(|p| p.exists()));
    let (cfg, from) = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // RUST_LOG, when set, wins over `[log] level`, also on reload.
    let env_filter = EnvFilter::try_from_default_env().ok();
    let from_env = env_filter.is_some();
    let filter = env_filter.unwrap_or_else(|| EnvFilter::new(&cfg.log.level));
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    // Logs go to stderr (journald captures it); colours only on a terminal.
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
    tracing::info!("configuration: {from}");
    let pulls = cfg.pull.clone();
    let sip_db = (!cfg.sip.enabled).then(|| cfg.sip.db.clone()).flatten();
    let stop_timeout = cfg.shutdown.timeout.0;
    let release_code = cfg.process.clone();
    runtime.block_on(async move {
        let gateway = match Gateway::start(cfg).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        gateway.reloader.set_log_hook(Box::new(move |level| {
            if from_env {
                return Err("RUST_LOG is set and overrides [log] level".into());
            }
            let f = EnvFilter::try_new(level).map_err(|e| format!("log.level {level:?}: {e}"))?;
            filter_handle.reload(f).map_err(|e| e.to_string())
        }));
        // `[[pull]]` sources: the relay sits above the gateway (D84).
        let _relay =
            gbgate::relay::Relay::start(pulls, gateway.hub.clone(), gateway.rtp.clone(), gateway.shutdown.clone());
        // Channels sit above the relay (D100): restored before the ports file says we are up.
        let Some(channels) = start_channels(&gateway, sip_db) else {
            gateway.stop().await;
            return ExitCode::FAILURE;
        };
        if let Some(path) = ports_file {
            if let Err(e) = write_ports(&path, &gateway) {
                tracing::error!("cannot write the ports file {}: {e}", path.display());
                gateway.stop().await;
                return ExitCode::FAILURE;
            }
        }
        if release_code.release_startup_code {
            schedule_code_release(release_code.release_startup_code_after.0);
        }
        loop {
            match signals.next().await {
                Sig::Reload => reload(&gateway, reload_path.as_deref()),
                Sig::Stop(name) => {
                    tracing::info!("{name}: shutting down");
                    break;
                }
            }
        }
        // Channels first: their BYEs and the pushes' clean end go out while SIP still runs.
        // Bounded by the same deadline as the rest of the stop (D110).
        if tokio::time::timeout(stop_timeout, channels.shutdown()).await.is_err() {
            tracing::warn!("the channels did not stop within [shutdown] timeout ({stop_timeout:?}): cut short");
        }
        gateway.stop().await;
        ExitCode::SUCCESS
    })
}

/// D194: once start-up's tail is over, the binary's pages only start-up used go back to the
/// kernel (`[process] release_startup_code`). Runs on a blocking thread: it reads smaps and waits
/// for the kernel's reclaim.
fn schedule_code_release(after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        match tokio::task::spawn_blocking(code_pages::release_startup_code).await {
            Ok(Ok(released)) => tracing::info!("start-up code paged out ([process] release_startup_code): {released}"),
            Ok(Err(e)) => tracing::warn!("cannot page out the start-up code ([process] release_startup_code): {e}"),
            Err(e) => tracing::warn!("the start-up code release did not run: {e}"),
        }
    });
}

/// SIGHUP: re-reads the config file and applies what can change at runtime (D112).
fn reload(gateway: &Gateway, path: Option<&Path>) {
    tracing::info!("SIGHUP: reloading the configuration");
    let Some(path) = path else {
        gateway.reloader.refused("no config file to re-read (running on built-in defaults)".into());
        return;
    };
    match Config::load(path) {
        Ok(cfg) => {
            gateway.reloader.apply(cfg);
        }
        Err(e) => {
            gateway.reloader.refused(format!("{}: {e}", path.display()));
        }
    }
}

enum Sig {
    Stop(&'static str),
    Reload,
}

/// SIGTERM and SIGINT (Ctrl-C) stop, SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Sig::Stop("SIGTERM"),
                _ = self.int.recv() => Sig::Stop("SIGINT"),
                _ = self.hup.recv() => Sig::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Sig::Stop("Ctrl-C")
        }
    }
}

/// The channel layer: its table in the `[sip] db` file (opened once by the GB store, or here
/// when SIP is off), its routes mounted into the API, the stored channels restored and
/// `gateway_started` sent. `None` (logged) when the database cannot be opened or read.
fn start_channels(gateway: &Gateway, sip_db: Option<PathBuf>) -> Option<gbgate::channel::Channels> {
    let db = match (gateway.gb.as_ref().and_then(|g| g.database()), sip_db) {
        (Some(db), _) => Some(db),
        (None, Some(path)) => match redb::Database::create(&path) {
            Ok(db) => Some(std::sync::Arc::new(db)),
            Err(e) => {
                tracing::error!("cannot open the channel database {}: {e}", path.display());
                return None;
            }
        },
        (None, None) => None,
    };
    let channels = gbgate::channel::Channels::new(
        gateway.hub.clone(),
        gateway.rtp.clone(),
        gateway.gb.clone(),
        db,
        gateway.shutdown.clone(),
    );
    gateway.mount(gbgate::channel::api::router(channels.clone()));
    match channels.restore() {
        Ok(views) => channels.gateway_started(&views),
        Err(e) => {
            tracing::error!("cannot restore the channels: {e}");
            return None;
        }
    }
    Some(channels)
}

/// Writes the bound addresses as JSON, atomically (a reader never sees half a file).
fn write_ports(path: &Path, gw: &Gateway) -> std::io::Result<()> {
    let text = serde_json::json!({
        "rtp": gw.rtp_addr.to_string(),
        "api": gw.api_addr.to_string(),
        "rtsp": gw.rtsp_addr.map(|a| a.to_string()),
        "rtmp": gw.rtmp_addr.map(|a| a.to_string()),
        "http": gw.http_addr.map(|a| a.to_string()),
        "webrtc": gw.webrtc_addr.map(|a| a.to_string()),
        "sip": gw.sip_addr.map(|a| a.to_string()),
    })
    .to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
