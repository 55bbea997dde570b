//! # tessera-protocols
//!
//! Secure protocols on top of the `tessera` core:
//! - arithmetic ([`arith`]: multiplication, matrix products, faithful truncation),
//!   comparisons and FSS building blocks ([`compare`], [`spline`], [`lut`], [`lookup`]);
//! - the transformer nonlinear set ([`gelu`], [`silu`], [`softmax`], [`exp`],
//!   [`layernorm`], [`rmsnorm`], [`reciprocal`], [`rsqrt`]);
//! - modules that own shared weights, a forward protocol and (derived from it) their
//!   preprocessing plan ([`nn`]), and model families composed of them ([`models`]);
//! - model import, tokenisers and plaintext f64 references ([`bert`], [`llama`], [`gguf`]).
//!
//! Each protocol's doc comment states its rounds and bytes per party, and a test holds
//! those numbers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// The run-time names of a method enum (`--method NAME`, `--gelu NAME`, ...): `ALL` (the
/// variants in the given order, default first), `name()`, `Display`, and a `FromStr` whose
/// error lists every name.
macro_rules! method_names {
    ($ty:ident, $what:literal, [$($v:ident => $name:literal),+ $(,)?]) => {
        impl $ty {
            /// Every method, default first.
            pub const ALL: &'static [$ty] = &[$($ty::$v),+];
            /// The method's name, as the command line takes it.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = tessera::error::Error;
            fn from_str(s: &str) -> tessera::error::Result<Self> {
                $ty::ALL.iter().copied().find(|m| m.name() == s).ok_or_else(|| {
                    let all: Vec<String> = $ty::ALL.iter().map(|m| m.to_string()).collect();
                    crate::exp::unknown($what, s, &all)
                })
            }
        }
    };
}

pub mod arith;
pub mod bert;
pub mod compare;
pub mod exp;
pub mod gelu;
pub mod gguf;
pub mod layernorm;
pub mod llama;
pub mod log;
pub mod lookup;
pub mod lut;
pub mod models;
pub mod nn;
pub mod reciprocal;
pub mod resnet;
pub mod rmsnorm;
pub mod rsqrt;
pub mod silu;
pub mod softmax;
pub mod spline;
pub(crate) mod tablefn;
