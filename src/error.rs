//! The one error type of the core crate.
//!
//! Every variant names the thing at fault (the peer, the file, the shape, the value), so a
//! user reading an error from a three-host run knows where to look.

use std::path::PathBuf;

/// A party's index: 0, 1 (and 2) for the compute parties; in 2PC the dealer is 2.
pub type PartyId = usize;

/// Errors of the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two tensors (or a tensor and a requested shape) do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that found the mismatch.
        op: &'static str,
        /// Which shapes, e.g. "[2, 3] vs [4, 3]".
        detail: String,
    },
    /// A real number cannot be encoded with the session's fixed-point format.
    #[error("fixed-point overflow: {value} does not fit in Z_2^64 with {frac_bits} fractional bits (|x| must be < {limit})")]
    FixedOverflow {
        /// The value that was to be encoded.
        value: f64,
        /// The session's fractional bits.
        frac_bits: u32,
        /// The largest magnitude that can be encoded.
        limit: f64,
    },
    /// A fixed-point parameter outside the supported range.
    #[error("fractional bits {0} out of range: must be in 12..=24")]
    FracBits(u32),
    /// A party id that does not exist in this session.
    #[error("party id {id} out of range: this session has parties 0..{n}")]
    PartyId {
        /// The offending id.
        id: PartyId,
        /// Number of endpoints in the session.
        n: usize,
    },
    /// A message from a peer was shorter or longer than the protocol expects.
    #[error("message from party {peer} has {got} words, expected {expected} ({context})")]
    MessageLength {
        /// The sender.
        peer: PartyId,
        /// Words received.
        got: usize,
        /// Words expected.
        expected: usize,
        /// Which step expected it.
        context: String,
    },
    /// A malformed frame on the wire (bad length, bad header).
    #[error("malformed frame from party {peer}: {detail}")]
    Frame {
        /// The sender.
        peer: PartyId,
        /// What was wrong.
        detail: String,
    },
    /// A peer did not answer within the deadline.
    #[error("party {peer} timed out after {secs:.1}s while {during}")]
    Timeout {
        /// The peer we waited for.
        peer: PartyId,
        /// The deadline in seconds.
        secs: f64,
        /// What we were doing.
        during: String,
    },
    /// A peer did not connect within the start deadline.
    #[error("party {peer} at {addr} did not connect within {secs}s")]
    ConnectTimeout {
        /// The peer.
        peer: PartyId,
        /// Its configured address.
        addr: String,
        /// The start deadline in seconds.
        secs: u64,
    },
    /// The connection to a peer broke (closed, reset, TLS failure).
    #[error("connection to party {peer} failed: {detail}")]
    PeerGone {
        /// The peer.
        peer: PartyId,
        /// The underlying reason.
        detail: String,
    },
    /// A peer aborted the session and told us why. `origin` is the party whose failure
    /// started it (the peer itself, or a party the peer saw fail first), so a cascade of
    /// aborts still names the party that really failed.
    #[error("{}", aborted_text(*peer, *origin, reason))]
    Aborted {
        /// The peer that closed its connection to us.
        peer: PartyId,
        /// The party whose failure ended the session.
        origin: PartyId,
        /// The reason the peer gave.
        reason: String,
    },
    /// Configuration file problem.
    #[error("config {path}: {detail}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        detail: String,
    },
    /// A file could not be read or written. The OS error is part of the message and not
    /// a separate `source()`, so a printed error chain names it once.
    #[error("{path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// Preprocessing material does not match what the protocol asks for.
    #[error("preprocessing: {0}")]
    Preprocessing(String),
    /// A protocol was used in a setting or with parameters it does not support.
    #[error("{0}")]
    Unsupported(String),
    /// TLS / certificate problem.
    #[error("identity: {0}")]
    Identity(String),
    /// Function secret sharing: bad parameters or a malformed key.
    #[error("fss: {0}")]
    Fss(#[from] crate::fss::FssError),
}

/// Result with the core error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn aborted_text(peer: PartyId, origin: PartyId, reason: &str) -> String {
    if peer == origin {
        format!("party {peer} aborted: {reason}")
    } else {
        format!("party {origin} failed (party {peer} aborted the session: {reason})")
    }
}

impl Error {
    /// The party whose failure this error reports, if it is another party's: the peer of
    /// a lost connection, a timeout or a malformed message, or the origin of an abort.
    /// `None` for local errors (a bad file, a shape mismatch), whose origin is this party.
    pub fn origin(&self) -> Option<PartyId> {
        match self {
            Error::MessageLength { peer, .. }
            | Error::Frame { peer, .. }
            | Error::Timeout { peer, .. }
            | Error::ConnectTimeout { peer, .. }
            | Error::PeerGone { peer, .. } => Some(*peer),
            Error::Aborted { origin, .. } => Some(*origin),
            _ => None,
        }
    }

    /// Shorthand for a shape error.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
