//! The LAN/WAN benchmark harness (`tessera bench suite`, `tessera compare`, and the
//! `--profile` of `tessera launch`).
//!
//! * [`profile`]: network profiles (`configs/profiles/*.toml`, or RTT/bandwidth flags).
//! * [`relay`]: the user-space UDP relay that makes QUIC connections experience a profile.
//! * [`suite`]: sweeps over ops x settings x profiles, each measurement a fresh launch of
//!   real party processes, warm-ups and repeats, the cost model.
//! * [`report`]: JSON lines, a Markdown table, an SVG plot, and `compare`.
//!
//! docs/harness.md has the commands and a LAN/WAN table produced by the harness.

pub mod profile;
pub mod relay;
pub mod report;
pub mod suite;
