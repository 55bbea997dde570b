//! Fixed-point encoding of reals in Z_2^64.
//!
//! A real x is stored as the two's-complement integer round(x * 2^f) mod 2^64, with `f`
//! fractional bits (default 16, per session 12..=24). Encoding is checked: a value whose
//! scaled magnitude does not fit in a signed 64-bit integer, or a NaN, is an error rather
//! than a silent wrap. Products of two encodings carry 2f fractional bits and must be
//! truncated back (see `tessera-protocols`' `arith::truncate`).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Default number of fractional bits.
pub const DEFAULT_FRAC_BITS: u32 = 16;

/// A fixed-point format with `frac_bits` fractional bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: DEFAULT_FRAC_BITS,
        }
    }
}

impl FixedPoint {
    /// A format with `frac_bits` in 12..=24.
    pub fn new(frac_bits: u32) -> Result<Self> {
        if !(12..=24).contains(&frac_bits) {
            return Err(Error::FracBits(frac_bits));
        }
        Ok(FixedPoint { frac_bits })
    }
    /// Number of fractional bits.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }
    /// 2^f as a float.
    pub fn scale(&self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }
    /// One unit in the last place, 2^-f.
    pub fn ulp(&self) -> f64 {
        1.0 / self.scale()
    }
    /// Largest magnitude that can be encoded: 2^(63 - f).
    pub fn limit(&self) -> f64 {
        2f64.powi(63 - self.frac_bits as i32)
    }
    /// Encodes one real. Errors if `x` is NaN or round(x 2^f) does not fit in an i64.
    pub fn encode(&self, x: f64) -> Result<u64> {
        let y = (x * self.scale()).round();
        // i64 range is [-2^63, 2^63); the f64 comparison is exact at these powers of two.
        if !(y >= -(2f64.powi(63)) && y < 2f64.powi(63)) {
            return Err(Error::FixedOverflow {
                value: x,
                frac_bits: self.frac_bits,
                limit: self.limit(),
            });
        }
        Ok(y as i64 as u64)
    }
    /// Decodes one ring element as a signed fixed-point number.
    pub fn decode(&self, v: u64) -> f64 {
        v as i64 as f64 / self.scale()
    }
    /// Encodes a tensor element-wise (first failing element is reported).
    pub fn encode_tensor(&self, t: &Tensor<f64>) -> Result<Tensor<u64>> {
        let data = t
            .data()
            .iter()
            .map(|&x| self.encode(x))
            .collect::<Result<Vec<_>>>()?;
        Tensor::from_vec(t.shape(), data)
    }
    /// Decodes a tensor element-wise.
    pub fn decode_tensor(&self, t: &Tensor<u64>) -> Tensor<f64> {
        t.map(|v| self.decode(v))
    }
    /// Encodes a public constant used to scale a share (integer multiplier when `x` is an
    /// integer, otherwise a fixed-point multiplier that needs a truncation afterwards).
    pub fn encode_slice(&self, xs: &[f64]) -> Result<Vec<u64>> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_edges() {
        let fp = FixedPoint::default();
        for x in [0.0, -1.0, 1.5, -3.25, 1e9, -1e9, fp.ulp(), -fp.ulp()] {
            let v = fp.encode(x).unwrap();
            assert!((fp.decode(v) - x).abs() <= fp.ulp() / 2.0, "{x}");
        }
        assert_eq!(fp.encode(-1.0).unwrap(), (-(1i64 << 16)) as u64);
        // largest representable: (2^63 - 1) / 2^16 rounds in f64 to 2^47, which is out.
        let max = fp.limit() - 1.0;
        assert!((fp.decode(fp.encode(max).unwrap()) - max).abs() < 1.0);
        assert!(fp.encode(-fp.limit()).is_ok());
        let e = fp.encode(fp.limit()).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
        assert!(fp.encode(f64::NAN).is_err());
        assert!(fp.encode(f64::INFINITY).is_err());
    }

    #[test]
    fn frac_bits_range() {
        assert!(FixedPoint::new(11).is_err());
        assert!(FixedPoint::new(25).is_err());
        for f in 12..=24 {
            let fp = FixedPoint::new(f).unwrap();
            assert_eq!(fp.decode(fp.encode(0.5).unwrap()), 0.5);
        }
    }
}
