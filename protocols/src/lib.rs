//! # tessera-protocols
//!
//! Secure protocols on top of the `tessera` core: arithmetic (multiplication, matrix
//! multiplication, faithful truncation). Each protocol's doc comment states its rounds
//! and bytes per party, and a test holds those numbers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arith;
pub mod bert;
pub mod compare;
pub mod exp;
pub mod gelu;
pub mod layernorm;
pub mod lookup;
pub mod lut;
pub mod reciprocal;
pub mod rsqrt;
pub mod softmax;
pub mod spline;
