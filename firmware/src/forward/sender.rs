//! One sender per destination: reads its spool, sends, confirms, acknowledges.
//!
//! Loop: connect (jittered exponential backoff between failures), then send
//! the spool in order from the first unconfirmed entry, in batches, each
//! confirmed by a read probe before it is acknowledged to the writer (which
//! deletes the entries). A hole before the first entry (entries dropped from a
//! full spool) is announced by a gap event first. Entries that were written on
//! a connection that then failed are sent again with `resent="1"`. When idle it
//! waits for the writer's wake-up, the heartbeat timer, or the receiver closing
//! the connection. State changes are reported for `forward-status`.

use super::error::ForwardError;
use super::event::{Envelope, Event, Gap, Heartbeat, Sender};
use super::settings::{ForwardConfig, Transport};
use super::spool::{ForwardShared, SpoolReader};
use super::status::DestState;
use super::transport::{Conn, connect};
use crate::store::DataDir;
use crate::timefmt::now_ms;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Entries per batch and bytes per batch.
const BATCH_ENTRIES: usize = 256;
const BATCH_BYTES: usize = 512 * 1024;
/// Spool poll when no wake-up arrives.
const POLL: Duration = Duration::from_secs(1);

/// A snapshot of appliance counters for heartbeats.
pub type CounterSource = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// Everything one destination's sender needs.
pub struct Destination {
    pub cfg: ForwardConfig,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub sender: Arc<Sender>,
}

impl Destination {
    /// Build from config (TLS material is loaded here: errors name the file).
    pub fn new(cfg: ForwardConfig, sender: Arc<Sender>) -> Result<Destination, ForwardError> {
        let tls = if cfg.transport == Transport::Tls {
            Some(super::tls::client_config(&cfg)?)
        } else {
            None
        };
        Ok(Destination { cfg, tls, sender })
    }

    pub fn connect_fut(&self) -> impl std::future::Future<Output = Result<Conn, ForwardError>> + '_ {
        connect(&self.cfg, self.tls.as_ref())
    }

    /// One message, framed, appended to `stream` (or pushed as a datagram).
    pub fn encode(&self, env: &Envelope<'_>, stream: &mut Vec<u8>, datagrams: &mut Vec<Vec<u8>>) {
        let msg = super::syslog::message(env, self.cfg.facility_code(), self.cfg.format, self.cfg.message_limit());
        if self.cfg.transport == Transport::Udp {
            datagrams.push(msg);
        } else {
            super::syslog::frame(&msg, self.cfg.framing, stream);
        }
    }

    /// A gap notice (entries lost before delivery), framed like any message.
    fn encode_gap(&self, gap: Gap, stream: &mut Vec<u8>, datagrams: &mut Vec<Vec<u8>>) {
        let ev = Event::Gap(gap);
        let env = Envelope {
            event: &ev,
            seq: None,
            resent: false,
            at_ms: now_ms(),
            sender: &self.sender,
        };
        self.encode(&env, stream, datagrams);
    }

    fn initial_state(&self) -> DestState {
        DestState {
            name: self.cfg.name.clone(),
            address: self.cfg.address.clone(),
            transport: self.cfg.transport,
            framing: (self.cfg.transport != Transport::Udp).then_some(self.cfg.framing),
            format: self.cfg.format,
            client_cert_not_after_ms: self.cfg.client_cert_file.as_deref().and_then(super::tls::pem_not_after),
            ..DestState::default()
        }
    }
}

/// Small xorshift for backoff jitter (seeded from the clock and the name).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Between half of `d` and `d`.
    fn around(&mut self, d: Duration) -> Duration {
        let ms = d.as_millis().max(2) as u64;
        Duration::from_millis(ms / 2 + self.next() % (ms / 2 + 1))
    }
}

/// Why a session ended.
enum End {
    Stop,
    Failed(ForwardError),
}

struct Run<'a> {
    d: &'a Destination,
    shared: &'a ForwardShared,
    reader: SpoolReader,
    state: DestState,
    /// Highest sequence confirmed delivered.
    confirmed: u64,
    /// Highest sequence ever written to a connection (at or below: may be a duplicate).
    sent_upto: u64,
    counters: CounterSource,
    /// `flowwarden_forward_delivered_total` of this destination.
    delivered: crate::metrics::Counter,
    started: Instant,
    next_heartbeat: Option<Instant>,
    /// For the watchdog: connecting and sending are units of work (each bounded
    /// by a timeout); waiting for alerts is idle.
    stage: crate::progress::Stage,
}

impl Run<'_> {
    fn publish(&mut self) {
        self.state.updated_ms = now_ms();
        if let Ok(j) = serde_json::to_vec(&self.state) {
            self.shared.report(&self.d.cfg.name, j);
        }
    }

    fn fail(&mut self, why: ForwardError) {
        tracing::warn!("forward {}: {why} ({} failure)", self.d.cfg.name, why.kind());
        if self.state.connected {
            self.state.since_ms = Some(now_ms());
        }
        self.state.connected = false;
        self.state.last_error_kind = Some(why.kind().into());
        self.state.last_error = Some(why.to_string());
        self.state.last_error_ms = Some(now_ms());
        self.publish();
    }

    fn heartbeat(&mut self) -> Heartbeat {
        let mut h = Heartbeat {
            delivered: self.state.delivered,
            resent: self.state.resent,
            uptime_s: self.started.elapsed().as_secs(),
            counters: (self.counters)(),
            ..Heartbeat::default()
        };
        if let Ok(metas) = self.reader.metas()
            && let Some((_, m)) = metas.iter().find(|(n, _)| *n == self.d.cfg.name)
        {
            h.queue_depth = m.next_seq.saturating_sub(1).saturating_sub(self.confirmed).min(m.entries);
            h.queue_bytes = m.bytes;
            h.dropped = m.dropped;
        }
        if h.queue_depth > 0
            && let Ok(Some(at)) = self.reader.oldest_at(&self.d.cfg.name)
        {
            h.oldest_age_s = now_ms().saturating_sub(at) / 1000;
        }
        h
    }

    /// Send the next batch; Ok(false) when the spool had nothing.
    async fn send_batch(&mut self, conn: &mut Conn) -> Result<bool, ForwardError> {
        let batch = self
            .reader
            .read(&self.d.cfg.name, self.confirmed, BATCH_ENTRIES, BATCH_BYTES)
            .map_err(|e| ForwardError::Spool(format!("cannot read the spool: {e}")))?;
        let Some(first) = batch.first() else { return Ok(false) };
        let mut stream = Vec::new();
        let mut datagrams = Vec::new();
        let sender = self.d.sender.clone();
        let mut gaps = 0;
        let mut expect = self.confirmed + 1;
        let mut resent = 0;
        let last = batch.last().map(|b| b.0).unwrap_or(first.0);
        for (seq, entry, _) in &batch {
            if *seq > expect {
                self.d.encode_gap(
                    Gap {
                        first_lost: expect,
                        last_lost: seq - 1,
                    },
                    &mut stream,
                    &mut datagrams,
                );
                gaps += 1;
            }
            expect = seq + 1;
            let Some(entry) = entry else {
                // Undecodable: announced as a one-entry gap.
                self.state.bad_entries += 1;
                self.d.encode_gap(
                    Gap {
                        first_lost: *seq,
                        last_lost: *seq,
                    },
                    &mut stream,
                    &mut datagrams,
                );
                gaps += 1;
                continue;
            };
            let is_resent = *seq <= self.sent_upto;
            resent += u64::from(is_resent);
            let env = Envelope {
                event: &entry.event,
                seq: Some(*seq),
                resent: is_resent,
                at_ms: entry.at_ms,
                sender: &sender,
            };
            self.d.encode(&env, &mut stream, &mut datagrams);
        }
        // Counted as sent before the write: a write that fails half-way may still
        // have delivered some of it, so a retry of any of it is a possible duplicate.
        self.sent_upto = self.sent_upto.max(last);
        self.state.sent_upto = self.sent_upto;
        conn.send(&self.d.cfg, &stream, &datagrams).await?;
        conn.confirm(&self.d.cfg).await?;
        self.confirmed = last;
        self.shared.ack(&self.d.cfg.name, last);
        self.state.delivered += batch.len() as u64;
        self.delivered.add(batch.len() as u64);
        self.state.resent += resent;
        self.state.gaps += gaps;
        self.state.last_success_ms = Some(now_ms());
        self.publish();
        Ok(true)
    }

    async fn send_one(&mut self, conn: &mut Conn, ev: Event) -> Result<(), ForwardError> {
        let sender = self.d.sender.clone();
        let env = Envelope {
            event: &ev,
            seq: None,
            resent: false,
            at_ms: now_ms(),
            sender: &sender,
        };
        let (mut stream, mut dg) = (Vec::new(), Vec::new());
        self.d.encode(&env, &mut stream, &mut dg);
        conn.send(&self.d.cfg, &stream, &dg).await?;
        conn.confirm(&self.d.cfg).await
    }

    async fn session(&mut self, conn: &mut Conn, wake: &mut watch::Receiver<u64>, stop: &mut watch::Receiver<bool>) -> End {
        loop {
            if *stop.borrow() {
                return End::Stop;
            }
            let unit = self.stage.busy();
            let sent = self.send_batch(conn).await;
            drop(unit);
            match sent {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return End::Failed(e),
            }
            if let Some(at) = self.next_heartbeat
                && Instant::now() >= at
            {
                let hb = Event::Heartbeat(self.heartbeat());
                let unit = self.stage.busy();
                let sent = self.send_one(conn, hb).await;
                drop(unit);
                if let Err(e) = sent {
                    return End::Failed(e);
                }
                self.state.heartbeats += 1;
                self.state.last_success_ms = Some(now_ms());
                self.publish();
                self.next_heartbeat = Some(Instant::now() + Duration::from_millis(self.d.cfg.heartbeat_interval.ms()));
                continue;
            }
            let until_hb = self
                .next_heartbeat
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(POLL);
            let wait = POLL.min(until_hb);
            let cfg = &self.d.cfg;
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                why = conn.closed(cfg) => return End::Failed(why),
                _ = stop.changed() => return End::Stop,
            }
        }
    }
}

/// Run one destination until `stop` turns true.
pub async fn run(
    d: Destination,
    dir: DataDir,
    shared: Arc<ForwardShared>,
    counters: CounterSource,
    delivered: crate::metrics::Counter,
    mut stop: watch::Receiver<bool>,
) {
    let reader = SpoolReader::new(&dir.state());
    let confirmed = reader
        .metas()
        .ok()
        .and_then(|m| m.into_iter().find(|(n, _)| *n == d.cfg.name))
        .map(|(_, m)| m.acked_upto)
        .unwrap_or(0);
    let previous: Option<DestState> = reader
        .states()
        .ok()
        .and_then(|s| s.into_iter().find(|(n, _)| *n == d.cfg.name))
        .and_then(|(_, j)| serde_json::from_slice(&j).ok());
    let mut state = d.initial_state();
    let sent_upto = previous.as_ref().map(|p| p.sent_upto).unwrap_or(0).max(confirmed);
    state.sent_upto = sent_upto;
    let hb = d.cfg.heartbeat_interval.ms();
    let mut run = Run {
        d: &d,
        shared: &shared,
        reader,
        state,
        confirmed,
        sent_upto,
        counters,
        delivered,
        started: Instant::now(),
        next_heartbeat: (hb > 0).then(Instant::now),
        stage: crate::progress::global().stage(format!("sender {}", d.cfg.name)),
    };
    run.publish();
    let mut wake = shared.subscribe();
    let mut jitter = Jitter(now_ms() ^ (u64::from(std::process::id()) << 32) ^ d.cfg.name.len() as u64 | 1);
    let min = Duration::from_millis(d.cfg.reconnect_min.ms());
    let max = Duration::from_millis(d.cfg.reconnect_max.ms());
    let mut backoff = min;
    loop {
        if *stop.borrow() {
            break;
        }
        let unit = run.stage.busy();
        let attempt = tokio::select! {
            c = d.connect_fut() => c,
            _ = stop.changed() => break,
        };
        drop(unit);
        let delivered_before = run.state.delivered + run.state.heartbeats;
        match attempt {
            Err(e) => {
                run.state.connect_failures += 1;
                run.fail(e);
            }
            Ok(mut conn) => {
                run.state.connects += 1;
                run.state.connected = true;
                run.state.since_ms = Some(now_ms());
                run.state.peer = Some(conn.peer.to_string());
                run.state.tls_version = conn.tls_version.clone();
                run.state.tls_cipher = conn.tls_cipher.clone();
                run.state.server_cert_not_after_ms = conn.server_cert_not_after_ms;
                run.publish();
                tracing::info!("forward {}: connected to {}", d.cfg.name, conn.peer);
                match run.session(&mut conn, &mut wake, &mut stop).await {
                    End::Stop => {
                        conn.close().await;
                        run.state.connected = false;
                        run.state.since_ms = Some(now_ms());
                        run.publish();
                        break;
                    }
                    End::Failed(e) => run.fail(e),
                }
            }
        }
        // Progress resets the backoff; repeated failure doubles it.
        backoff = if run.state.delivered + run.state.heartbeats > delivered_before {
            min
        } else {
            (backoff * 2).min(max)
        };
        let pause = jitter.around(backoff);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
    }
    run.publish();
}

/// `forward-test`: connect, send one test event, confirm. Returns a line for humans.
pub async fn test_destination(d: &Destination) -> Result<String, ForwardError> {
    let t0 = Instant::now();
    let mut conn = d.connect_fut().await?;
    let ev = Event::Test;
    let env = Envelope {
        event: &ev,
        seq: None,
        resent: false,
        at_ms: now_ms(),
        sender: &d.sender,
    };
    let (mut stream, mut dg) = (Vec::new(), Vec::new());
    d.encode(&env, &mut stream, &mut dg);
    conn.send(&d.cfg, &stream, &dg).await?;
    conn.confirm(&d.cfg).await?;
    let udp = d.cfg.transport == Transport::Udp;
    let mut line = format!(
        "{} a test event to {} over {}",
        if udp { "sent" } else { "delivered" },
        conn.peer,
        match (&conn.tls_version, &conn.tls_cipher) {
            (Some(v), Some(c)) => format!("TLS ({v}, {c})"),
            _ => d.cfg.transport.as_str().to_uppercase(),
        }
    );
    if let Some(na) = conn.server_cert_not_after_ms {
        line.push_str(&format!("; server certificate valid until {}", crate::timefmt::rfc3339_ms(na)));
    }
    if udp {
        line.push_str(&format!(
            "; UDP cannot confirm delivery: no ICMP port unreachable came back within {} ms, which is all it can tell",
            conn.confirm_wait.as_millis()
        ));
    }
    line.push_str(&format!(" in {} ms", t0.elapsed().as_millis()));
    conn.close().await;
    Ok(line)
}
