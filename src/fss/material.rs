//! FSS preprocessing material: what the dealer deals for the comparison-based protocols.
//!
//! (Placeholder: no FSS request kinds yet; the building blocks add theirs here.)

use crate::error::Result;
use crate::preproc::Material;
use crate::prg::Prg;

/// A request for FSS material (keys and masks), dealt by party 2 to P0 and P1.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FssRequest {}

impl FssRequest {
    /// Words the dealer sends to `party` (0 or 1).
    pub fn correction_len(&self, _party: usize) -> usize {
        match *self {}
    }
    /// Word encoding (after the request tag).
    pub fn encode(&self) -> Vec<u64> {
        match *self {}
    }
    /// Decodes a request from the front of `w`, returning it and the words used.
    pub fn decode(_w: &[u64]) -> Result<(FssRequest, usize)> {
        Err(crate::Error::Preprocessing("unknown FSS request".into()))
    }
    /// The dealer's words for P0 and P1; advances `prg0`/`prg1` exactly as
    /// [`FssRequest::expand`] will on each side.
    pub fn deal(&self, _prg0: &mut Prg, _prg1: &mut Prg) -> [Vec<u64>; 2] {
        match *self {}
    }
    /// Party `party`'s material from its seed stream and the dealer's words.
    pub fn expand(&self, _party: usize, _prg: &mut Prg, _words: Vec<u64>) -> Result<Material> {
        match *self {}
    }
}
