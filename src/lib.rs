//! # Tessera core
//!
//! Two- and three-party secure computation over Z_2^64 with fixed-point encoding: ring
//! tensors, PRGs, additive (2PC + dealer) and replicated (3PC) sharing, seed-compressed
//! preprocessing, function secret sharing, and the transports that connect parties
//! (in-memory for tests, QUIC between processes). Protocols built on this core live in
//! the `tessera-protocols` crate; `../shared/DESIGN.md` has the architecture.
//!
//! A protocol is a synchronous function of a [`Party`] and [`Shared`] tensors that
//! computes locally and calls [`Party::exchange`] (or `open`) for each round:
//!
//! ```
//! use tessera::{runtime, Setting, Tensor};
//! let out = runtime::run(Setting::ThreePc, |p| {
//!     let fx = p.fixed();
//!     let x = fx.encode_tensor(&Tensor::from_vec(&[2], vec![1.5, -2.0])?)?;
//!     let xs = p.share_input(0, (p.id() == 0).then_some(&x), &[2])?;
//!     let y = xs.add(&xs)?; // local
//!     Ok(fx.decode_tensor(&p.open(&y)?))
//! }).unwrap();
//! assert_eq!(out[1].value.data(), &[3.0, -4.0]);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("tessera sends ring elements as little-endian bytes without conversion: big-endian hosts are not supported");

pub mod config;
pub mod error;
pub mod fixed;
pub mod fss;
pub mod identity;
pub mod net;
pub mod party;
pub mod preproc;
pub mod prg;
pub mod runtime;
pub mod share;
pub mod tensor;

pub use error::{Error, PartyId, Result};
pub use fixed::FixedPoint;
pub use party::{CommStats, MaterialMode, Party, SessionOptions, Setting, TruncMode};
pub use share::Shared;
pub use tensor::Tensor;
