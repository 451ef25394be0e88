//! Why forwarding to a destination failed, by kind, with a message for the
//! technician: the settings or TLS material (setup), the receiver's name
//! (resolve), reaching it (connect), a written batch not confirmed (delivery),
//! or the local spool (spool). The kind goes into the destination's state.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ForwardError {
    /// Settings or TLS material that cannot be used (names the key or file).
    #[error("{0}")]
    Setup(String),
    /// The receiver's name did not resolve.
    #[error("{0}")]
    Resolve(String),
    /// No connection or handshake: refused, timed out, certificate rejected.
    #[error("{0}")]
    Connect(String),
    /// Written but not confirmed: the receiver closed, reset, or its host
    /// answered ICMP port unreachable.
    #[error("{0}")]
    Delivery(String),
    /// The local spool could not be read.
    #[error("{0}")]
    Spool(String),
}

impl ForwardError {
    /// The kind as a word (destination state, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Setup(_) => "setup",
            ForwardError::Resolve(_) => "resolve",
            ForwardError::Connect(_) => "connect",
            ForwardError::Delivery(_) => "delivery",
            ForwardError::Spool(_) => "spool",
        }
    }
}
