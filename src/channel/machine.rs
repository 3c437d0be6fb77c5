//! A channel's life as a sans-IO state machine (D102): inputs and `now` in, the next step out.
//! The driver task in `super` does the I/O (INVITE/BYE, pulls, waits) and feeds the outcome back.
use std::time::Duration;

use serde::Serialize;

/// What a channel is doing, as the API and the callbacks say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not running: never started, or on demand and waiting for a player.
    Idle,
    /// Asking the source (INVITE, connect, waiting for the camera's first packets).
    Starting,
    /// Media flows into the hub stream.
    Live,
    /// Should be live but is not: no data, the source ended or the start failed; retrying.
    Stalled,
    /// Stopped by the API, by idle stop, or the source finished (playback).
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Starting => "starting",
            State::Live => "live",
            State::Stalled => "stalled",
            State::Stopped => "stopped",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The channel was started (API, autostart, restart).
    Start { on_demand: bool },
    /// A player asked for an on-demand channel's stream.
    Demand,
    /// The source is live (`how`: e.g. "INVITE answered, first keyframe").
    Up { how: String },
    /// Live, but no data for this long: the driver tore the source down (BYE).
    NoData { after: Duration },
    /// A start attempt failed.
    Failed { reason: String },
    /// The live source ended (BYE from the device, connection closed).
    Ended { reason: String },
    /// The source finished for good (a playback reached its end).
    Finished { reason: String },
    /// Nobody watched for this long.
    IdleStop { after: Duration },
    /// Stopped (API, delete, shutdown).
    Stop { reason: String },
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start the source now.
    Connect,
    /// Start it again after this wait.
    RetryIn(Duration),
    /// Wait for a player (on demand).
    WaitDemand,
    /// Keep the live source running.
    Run,
    /// The driver ends.
    Halt,
}

/// First wait before a retry; doubles per failure up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    reason: String,
    since_ms: u64,
    on_demand: bool,
    /// Failed attempts in a row (reset when live).
    failures: u32,
}

impl Machine {
    pub fn new(now_ms: u64) -> Machine {
        Machine { state: State::Idle, reason: "created".into(), since_ms: now_ms, on_demand: false, failures: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    fn retry_wait(&mut self) -> Duration {
        let wait = RETRY_MIN.saturating_mul(1u32 << self.failures.min(5)).min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    fn set(&mut self, state: State, reason: String, now_ms: u64) {
        self.state = state;
        self.reason = reason;
        self.since_ms = now_ms;
    }

    /// Applies `input`; the new state, reason and since are read back with the getters.
    pub fn on(&mut self, input: Input, now_ms: u64) -> Next {
        // A stopped channel stays stopped until it is started again.
        if self.state == State::Stopped && !matches!(input, Input::Start { .. }) {
            return Next::Halt;
        }
        match input {
            Input::Start { on_demand } => {
                self.on_demand = on_demand;
                self.failures = 0;
                if on_demand {
                    self.set(State::Idle, "on demand: starts when a player asks".into(), now_ms);
                    Next::WaitDemand
                } else {
                    self.set(State::Starting, "starting".into(), now_ms);
                    Next::Connect
                }
            }
            Input::Demand => {
                self.set(State::Starting, "a player asked".into(), now_ms);
                Next::Connect
            }
            Input::Up { how } => {
                self.failures = 0;
                self.set(State::Live, how, now_ms);
                Next::Run
            }
            Input::NoData { after } => {
                let wait = self.retry_wait();
                self.set(State::Stalled, format!("no data for {}, retrying in {}", secs(after), secs(wait)), now_ms);
                Next::RetryIn(wait)
            }
            Input::Failed { reason } => {
                let wait = self.retry_wait();
                self.set(State::Stalled, format!("start failed: {reason}; retrying in {}", secs(wait)), now_ms);
                Next::RetryIn(wait)
            }
            Input::Ended { reason } => {
                let wait = self.retry_wait();
                self.set(State::Stalled, format!("{reason}; retrying in {}", secs(wait)), now_ms);
                Next::RetryIn(wait)
            }
            Input::Finished { reason } => {
                self.set(State::Stopped, reason, now_ms);
                Next::Halt
            }
            Input::IdleStop { after } => {
                let reason = format!("idle stop: no player for {}", secs(after));
                if self.on_demand {
                    self.set(State::Idle, reason, now_ms);
                    Next::WaitDemand
                } else {
                    self.set(State::Stopped, reason, now_ms);
                    Next::Halt
                }
            }
            Input::Stop { reason } => {
                self.set(State::Stopped, reason, now_ms);
                Next::Halt
            }
        }
    }
}

/// `10s`, `1.5s`, `2m`: as a person reads a duration in a reason.
pub fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_starts_goes_live_stalls_and_retries_with_backoff() {
        let mut m = Machine::new(0);
        assert_eq!(m.state(), State::Idle);
        assert_eq!(m.on(Input::Start { on_demand: false }, 1), Next::Connect);
        assert_eq!((m.state(), m.since_ms()), (State::Starting, 1));
        assert_eq!(m.on(Input::Failed { reason: "device offline".into() }, 2), Next::RetryIn(RETRY_MIN));
        assert_eq!(m.state(), State::Stalled);
        assert_eq!(m.reason(), "start failed: device offline; retrying in 1s");
        assert_eq!(m.on(Input::Failed { reason: "x".into() }, 3), Next::RetryIn(2 * RETRY_MIN));
        assert_eq!(m.on(Input::Up { how: "INVITE answered".into() }, 4), Next::Run);
        assert_eq!((m.state(), m.reason()), (State::Live, "INVITE answered"));
        // Live resets the backoff.
        assert_eq!(m.on(Input::NoData { after: Duration::from_secs(10) }, 5), Next::RetryIn(RETRY_MIN));
        assert_eq!(m.reason(), "no data for 10s, retrying in 1s");
        for _ in 0..10 {
            m.on(Input::Ended { reason: "BYE from device".into() }, 6);
        }
        assert_eq!(m.on(Input::Ended { reason: "BYE from device".into() }, 7), Next::RetryIn(RETRY_MAX));
        assert_eq!(m.on(Input::Stop { reason: "stopped by the API".into() }, 8), Next::Halt);
        assert_eq!((m.state(), m.reason()), (State::Stopped, "stopped by the API"));
        assert_eq!(m.on(Input::Up { how: "late".into() }, 9), Next::Halt, "stopped stays stopped");
        assert_eq!(m.state(), State::Stopped);
    }

    #[test]
    fn on_demand_waits_for_a_player_and_idles_back() {
        let mut m = Machine::new(0);
        assert_eq!(m.on(Input::Start { on_demand: true }, 1), Next::WaitDemand);
        assert_eq!(m.state(), State::Idle);
        assert_eq!(m.on(Input::Demand, 2), Next::Connect);
        assert_eq!(m.on(Input::Up { how: "up".into() }, 3), Next::Run);
        assert_eq!(m.on(Input::IdleStop { after: Duration::from_secs(300) }, 4), Next::WaitDemand);
        assert_eq!((m.state(), m.reason()), (State::Idle, "idle stop: no player for 5m"));
        // Not on demand: an idle stop stops.
        let mut m = Machine::new(0);
        m.on(Input::Start { on_demand: false }, 1);
        m.on(Input::Up { how: "up".into() }, 2);
        assert_eq!(m.on(Input::IdleStop { after: Duration::from_millis(1500) }, 3), Next::Halt);
        assert_eq!((m.state(), m.reason()), (State::Stopped, "idle stop: no player for 1.5s"));
        assert_eq!(m.on(Input::Finished { reason: "x".into() }, 4), Next::Halt);
    }
}
