//! Stage progress, for the watchdog. Each stage of the data flow (collector,
//! decoder, writer, detector, senders, web) marks the units of work it does with
//! [`Stage::busy`]; waiting for input is idle, never hung. A stage busy with one
//! unit for longer than [`STALL`], or a stage thread that died, is hung.
//!
//! `run` ([`crate::pipeline::run_live`]) checks every few seconds and, on the
//! image, touches [`ALIVE_FILE`] only while no stage is hung; PID 1 pets the
//! hardware watchdog only while that file is fresh (crate::init), so a hung stage
//! (or a hung runtime, which stops the check itself) resets the box. The reason
//! goes to [`STALL_FILE`], which PID 1 keeps on the data partition for the next
//! boot to report.
//!
//! `flowwarden watchdog-test STAGE` freezes a stage on purpose (its next unit of
//! work never ends), to prove on a real box that the watchdog resets it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A unit of work longer than this is a hung stage.
pub const STALL: Duration = Duration::from_secs(60);
/// Written (pid, time) by the appliance while every stage makes progress.
pub const ALIVE_FILE: &str = "/run/flowwarden/alive";
/// Written by the appliance when a stage hangs: which, and since when.
pub const STALL_FILE: &str = "/run/flowwarden/stalled";
/// Most stages registered at once (collector sockets and senders are few).
const MAX_STAGES: usize = 64;

struct Cell {
    name: String,
    /// Milliseconds since the registry's start, plus one, when the current unit
    /// began; 0 while idle.
    busy_since: AtomicU64,
    /// The thread that owned the stage ended by panicking.
    dead: AtomicBool,
    /// `watchdog-test`: the next unit never ends.
    frozen: AtomicBool,
}

struct Inner {
    start: Instant,
    stages: Mutex<Vec<Arc<Cell>>>,
    /// Registrations refused because [`MAX_STAGES`] were registered.
    dropped: AtomicU64,
}

/// The registry of running stages.
#[derive(Clone)]
pub struct Progress(Arc<Inner>);

/// A hung stage, as [`Progress::check`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub stage: String,
    /// How long its current unit has lasted (0 for a dead stage).
    pub busy_secs: u64,
    pub dead: bool,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dead {
            write!(f, "stage {} stopped (its thread panicked)", self.stage)
        } else {
            write!(f, "stage {} made no progress for {} s", self.stage, self.busy_secs)
        }
    }
}

/// The process's registry (stages are started in many places; one watchdog).
pub fn global() -> &'static Progress {
    static G: OnceLock<Progress> = OnceLock::new();
    G.get_or_init(Progress::new)
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress(Arc::new(Inner {
            start: Instant::now(),
            stages: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.0.start.elapsed().as_millis() as u64
    }

    /// Registers a stage; it is watched until the returned handle is dropped.
    pub fn stage(&self, name: impl Into<String>) -> Stage {
        let cell = Arc::new(Cell {
            name: name.into(),
            busy_since: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
        });
        let mut stages = self.0.stages.lock().unwrap_or_else(|e| e.into_inner());
        // Dead stages stay listed (they are the reason for the reset) but count.
        if stages.len() < MAX_STAGES {
            stages.push(cell.clone());
        } else {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Stage {
            cell,
            registry: self.clone(),
        }
    }

    /// The first hung stage at `now_ms` (milliseconds since the registry began),
    /// or the names of the stages watched.
    pub fn check_at(&self, now_ms: u64) -> Result<Vec<String>, Stalled> {
        let stages = self.0.stages.lock().unwrap_or_else(|e| e.into_inner());
        let limit = STALL.as_millis() as u64;
        for c in stages.iter() {
            if c.dead.load(Ordering::Relaxed) {
                return Err(Stalled {
                    stage: c.name.clone(),
                    busy_secs: 0,
                    dead: true,
                });
            }
            let since = c.busy_since.load(Ordering::Relaxed);
            if since != 0 {
                let busy = now_ms.saturating_sub(since - 1);
                if busy > limit {
                    return Err(Stalled {
                        stage: c.name.clone(),
                        busy_secs: busy / 1000,
                        dead: false,
                    });
                }
            }
        }
        Ok(stages.iter().map(|c| c.name.clone()).collect())
    }

    pub fn check(&self) -> Result<Vec<String>, Stalled> {
        self.check_at(self.now_ms())
    }

    /// `watchdog-test`: the stage named `name` (or whose name's first word is
    /// `name`) hangs in its next unit of work. Returns the stages frozen, or
    /// the names there are.
    pub fn freeze(&self, name: &str) -> Result<Vec<String>, Vec<String>> {
        let stages = self.0.stages.lock().unwrap_or_else(|e| e.into_inner());
        let hit: Vec<String> = stages
            .iter()
            .filter(|c| c.name == name || c.name.split(' ').next() == Some(name))
            .map(|c| {
                c.frozen.store(true, Ordering::Relaxed);
                c.name.clone()
            })
            .collect();
        if hit.is_empty() {
            Err(stages.iter().map(|c| c.name.clone()).collect())
        } else {
            Ok(hit)
        }
    }

    /// Registrations refused because the registry was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// One stage's handle, held by the thread or task that runs it.
pub struct Stage {
    cell: Arc<Cell>,
    registry: Progress,
}

/// A unit of work under way; it ends when dropped. It does not borrow the
/// stage, so the stage's owner stays free to do the work.
pub struct Busy(Arc<Cell>);

impl Stage {
    /// A unit of work begins (and ends when the guard is dropped).
    pub fn busy(&self) -> Busy {
        self.busy_at(self.registry.now_ms())
    }

    fn busy_at(&self, now_ms: u64) -> Busy {
        self.cell.busy_since.store(now_ms + 1, Ordering::Relaxed);
        if self.cell.frozen.load(Ordering::Relaxed) {
            tracing::warn!("watchdog-test: stage {} hangs now, on purpose", self.cell.name);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Busy(self.cell.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.cell.dead.store(true, Ordering::Relaxed);
            return;
        }
        let mut stages = self.registry.0.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.retain(|c| !Arc::ptr_eq(c, &self.cell));
    }
}

/// What `run` does every [`REPORT_EVERY`] on the image: tell PID 1 it is alive
/// while every stage makes progress, and why not when one does not.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One report: writes `alive` (pid and the stages watched) or, for a hung
/// stage, removes it and writes `stalled`. Returns the stall, if any.
pub fn report(p: &Progress, alive: &std::path::Path, stalled: &std::path::Path) -> Option<Stalled> {
    report_at(p, p.now_ms(), alive, stalled)
}

fn report_at(p: &Progress, now_ms: u64, alive: &std::path::Path, stalled: &std::path::Path) -> Option<Stalled> {
    match p.check_at(now_ms) {
        Ok(names) => {
            // A stage that recovered: PID 1 goes by the stall file first.
            let _ = std::fs::remove_file(stalled);
            let text = format!("{}\n{}\n", std::process::id(), names.join("\n"));
            if let Err(e) = crate::fsutil::write_atomic(alive, text.as_bytes(), 0o644) {
                tracing::warn!("{}: {e}", alive.display());
            }
            None
        }
        Err(s) => {
            let _ = std::fs::remove_file(alive);
            let _ = std::fs::write(stalled, format!("{s}\n"));
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_stage_is_hung_only_past_the_limit_and_idle_is_never_hung() {
        let p = Progress::new();
        let w = p.stage("writer");
        let _d = p.stage("decoder");
        assert_eq!(p.check_at(10_000_000), Ok(vec!["writer".to_string(), "decoder".to_string()]));
        let unit = w.busy_at(1000);
        assert!(p.check_at(1000 + STALL.as_millis() as u64).is_ok());
        let e = p.check_at(1001 + STALL.as_millis() as u64 + 1000).unwrap_err();
        assert_eq!(e.to_string(), "stage writer made no progress for 61 s");
        drop(unit);
        assert!(p.check_at(u64::MAX / 2).is_ok());
    }

    #[test]
    fn a_stage_that_ends_is_forgotten_and_one_that_panics_is_reported() {
        let p = Progress::new();
        {
            let _s = p.stage("sender siem");
        }
        assert_eq!(p.check_at(0), Ok(vec![]));
        let q = p.clone();
        let t = std::thread::spawn(move || {
            let _s = q.stage("decoder");
            panic!("a bug");
        });
        assert!(t.join().is_err());
        let e = p.check_at(0).unwrap_err();
        assert!(e.dead);
        assert_eq!(e.to_string(), "stage decoder stopped (its thread panicked)");
    }

    #[test]
    fn freeze_names_the_stages_there_are_and_hangs_the_next_unit() {
        let p = Progress::new();
        let _c = p.stage("collector 0.0.0.0:2055");
        let w = p.stage("writer");
        assert_eq!(
            p.freeze("nosuch"),
            Err(vec!["collector 0.0.0.0:2055".to_string(), "writer".to_string()])
        );
        assert_eq!(p.freeze("collector"), Ok(vec!["collector 0.0.0.0:2055".to_string()]));
        // The writer is not frozen: its units end.
        drop(w.busy());
        assert!(p.check().is_ok());
    }

    #[test]
    fn the_registry_is_bounded_and_counts_what_it_refuses() {
        let p = Progress::new();
        let held: Vec<Stage> = (0..MAX_STAGES + 3).map(|i| p.stage(format!("s{i}"))).collect();
        assert_eq!(p.dropped(), 3);
        assert_eq!(p.check_at(0).map(|v| v.len()), Ok(MAX_STAGES));
        drop(held);
        assert_eq!(p.check_at(0), Ok(vec![]));
    }

    #[test]
    fn report_writes_alive_or_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (alive, stalled) = (dir.path().join("alive"), dir.path().join("stalled"));
        let p = Progress::new();
        let w = p.stage("writer");
        assert_eq!(report_at(&p, 0, &alive, &stalled), None);
        let text = std::fs::read_to_string(&alive).unwrap();
        assert!(text.starts_with(&format!("{}\nwriter\n", std::process::id())), "{text}");
        // Hung: the alive file goes, the reason is written.
        let unit = w.busy_at(1000);
        let late = 2000 + STALL.as_millis() as u64;
        let s = report_at(&p, late, &alive, &stalled).unwrap();
        assert_eq!(s.stage, "writer");
        assert!(!alive.exists());
        assert_eq!(
            std::fs::read_to_string(&stalled).unwrap(),
            "stage writer made no progress for 61 s\n"
        );
        // Recovered: alive again, and the reason is gone (PID 1 reads it first).
        drop(unit);
        assert_eq!(report_at(&p, late, &alive, &stalled), None);
        assert!(alive.exists() && !stalled.exists());
    }
}
