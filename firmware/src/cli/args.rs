//! The command line's arguments (a contract: other tools and checks rely on
//! these commands and flags; the help text says what each expects).

use crate::accounts::{TokenRole, UserRole};
use crate::query::{By, Format, TopKey};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "flowwarden", version = crate::version::version(), about = "NetFlow/IPFIX security monitoring appliance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the live collector, detectors and SIEM forwarding until SIGTERM/SIGINT.
    Run {
        /// Configuration file (TOML; `flowwarden check-config FILE` validates it). Default: built-in settings.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where flows, roll-ups and state are kept. Default: the config's data_dir, else
        /// /var/lib/flowwarden as root or ~/.local/share/flowwarden.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// UDP address to listen on (repeatable; replaces the configured listeners).
        #[arg(long = "listen", value_name = "ADDR:PORT")]
        listen: Vec<SocketAddr>,
        /// HTTPS address of the status page (repeatable; replaces `[web] listen`; port 0 picks one).
        #[arg(long = "web-listen", value_name = "ADDR:PORT")]
        web_listen: Vec<SocketAddr>,
        /// Plain-HTTP address that redirects to the page, used when the configuration sets no
        /// `[web] redirect_listen` (the firmware images pass 0.0.0.0:80).
        #[arg(long = "web-redirect-default", value_name = "ADDR:PORT")]
        web_redirect_default: Option<SocketAddr>,
        /// Feed a synthetic branch office with injected attacks through the live pipeline.
        #[arg(long)]
        demo: bool,
    },
    /// Replay NetFlow/IPFIX export packets from pcap/pcapng files, on event time.
    Ingest {
        /// Configuration file (TOML). Default: built-in settings.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory to store into (created if missing).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Capture files (pcap or pcapng) holding export datagrams.
        #[arg(required = true, value_name = "FILE.pcap")]
        files: Vec<PathBuf>,
    },
    /// List, rank or chart stored flows.
    Query {
        /// Data directory to read (works while `run` writes to it).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Per-exporter health: what each router sent, what was lost and why.
    Exporters {
        /// Data directory to read.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// List stored alerts.
    Alerts {
        /// Data directory to read.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Only alerts seen at or after this time (same forms as query --from, e.g. -2h).
        #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
        since: Option<String>,
        /// Only this kind: exfiltration, beaconing, scan, spike.
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: AlertFormat,
    },
    /// Detector learning state and counters.
    Detectors {
        /// Data directory to read.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// The appliance's metrics as last kept in the state file, in the Prometheus text format.
    Metrics {
        /// Data directory to read.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Send a test event to every [[forward]] destination and report per destination.
    ForwardTest {
        /// Configuration file with the [[forward]] destinations.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Each SIEM destination's state: connection, last success/error, spool depth, drops.
    ForwardStatus {
        /// Data directory to read.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// Web page users: set (create or change password and role), list, remove.
    /// Works whether or not `run` is running (then through its control socket).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Bearer tokens for the JSON API (viewer) and /metrics (metrics): create
    /// (the token is printed once), list, remove.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Make a running appliance read its configuration file again and apply it
    /// (as SIGHUP does); prints what it did, or why it kept the old one.
    Reload {
        /// The running appliance's data directory (its control socket is there).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Prove the watchdog: make one stage of the running appliance hang (decoder,
    /// writer, detector, collector, sender, web). On the image, PID 1 stops
    /// petting the watchdog about a minute later and the box resets.
    WatchdogTest {
        /// The running appliance's data directory (its control socket is there).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The stage to hang.
        #[arg(default_value = "writer")]
        stage: String,
        /// Really do it (without it, only says what would happen).
        #[arg(long)]
        yes: bool,
    },
    /// Save what this box has learned and been told — configuration, certificates,
    /// users, tokens, alerts, detector baselines, SIEM spools; not the flows — into
    /// one file encrypted with a passphrase (stdin's first line, or asked twice).
    Backup {
        /// The data directory (the appliance may be running on it).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The backup file to write.
        file: PathBuf,
    },
    /// Put a backup onto this box (passphrase: stdin's first line, or asked). With
    /// no appliance running on DIR it is applied at once; otherwise it is staged
    /// and applied when the appliance next starts (on the image: reboot).
    Restore {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The backup file.
        file: PathBuf,
    },
    /// Validate a configuration file; print what it sets and any warnings.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Install a signed firmware bundle (cargo xtask bundle) into the other system
    /// slot, on the appliance's image: prints each step and ends with
    /// `flowwarden: update V staged in slot a|b` (exit 0, then reboots into it unless
    /// --no-reboot), `flowwarden: update refused: REASON` (exit 1) or
    /// `flowwarden: update failed: REASON` (exit 2).
    Update {
        /// The bundle: a file, or an http:// URL with a numeric host.
        #[arg(value_name = "FILE|URL", required_unless_present = "acknowledge_rollback")]
        source: Option<String>,
        /// Stage the update but do not reboot into it.
        #[arg(long)]
        no_reboot: bool,
        /// Where a downloaded bundle is kept while it is installed.
        #[arg(long, value_name = "DIR", default_value = "/data")]
        data_dir: PathBuf,
        /// Acknowledge the last rollback (the page and `status` stop showing it in red).
        #[arg(long, conflicts_with_all = ["source", "no_reboot"])]
        acknowledge_rollback: bool,
    },
    /// Print version information.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user or change its password and role. The password is the first
    /// line of stdin when stdin is not a terminal; on a terminal it is asked twice.
    Set {
        #[command(flatten)]
        who: AccountName,
        #[arg(long, value_enum)]
        role: UserRole,
    },
    /// List the users (name, role, when last changed); never shows hashes.
    List(AccountList),
    /// Remove a user.
    Remove(AccountName),
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it once (only its SHA-256 is stored).
    Create {
        #[command(flatten)]
        who: AccountName,
        #[arg(long, value_enum)]
        role: TokenRole,
    },
    /// List the tokens (name, role, created); never shows a token.
    List(AccountList),
    /// Remove a token (it stops working at once).
    Remove(AccountName),
}

/// A data directory and a user's or token's name.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountName {
    /// The appliance's data directory (created if missing when setting).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// 1-64 characters from A-Z a-z 0-9 . _ -
    pub name: String,
}

/// A data directory and how to list.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountList {
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableOrJson,
}

/// What `query` selects and how it shows it.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Start (inclusive): RFC 3339 (2026-11-27T18:00:00Z), 'YYYY-MM-DD[ HH:MM[:SS]]' UTC,
    /// Unix seconds, or a span back from now (-2h, -30m, -7d).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub from: Option<String>,
    /// End, exclusive (same forms as --from).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub to: Option<String>,
    /// Filter expression, e.g. "src net 10.0.0.0/8 and dst port 443".
    #[arg(long, default_value = "", value_name = "EXPR")]
    pub filter: String,
    /// Output: an aligned table for people, JSON lines or CSV for tools.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Rank by this key instead of listing flows.
    #[arg(long, value_enum)]
    pub top: Option<TopKey>,
    /// Metric that --top ranks by.
    #[arg(long, value_enum, default_value = "bytes")]
    pub by: By,
    /// Rows for --top (default 10) or flows for a listing (default all; 0 lists none).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Time series with this bucket instead of listing flows.
    #[arg(long, value_enum, conflicts_with = "top")]
    pub series: Option<Bucket>,
    /// Say on stderr where the answer came from: the roll-ups, or a scan of the raw flows and why.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bucket {
    #[value(name = "1m")]
    Minute,
    #[value(name = "1h")]
    Hour,
}

impl Bucket {
    pub fn ms(self) -> u64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertFormat {
    Table,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableOrJson {
    Table,
    Json,
}
