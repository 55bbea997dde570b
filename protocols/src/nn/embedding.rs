//! Token embeddings: the private row lookup of the data owner's token ids in a secret
//! table (a two-server DPF lookup, [`crate::lookup`]), and public-index tables (BERT's
//! positions and token types, whose rows are selected locally).

use super::linear::Keys;
use super::{Cx, Matrix, MODEL_OWNER};
use tessera::error::{Error, Result};
use tessera::{Party, Shared, Tensor};

/// A secret [vocab, h] table looked up at the data owner's private ids. The table is a
/// prepared [`Matrix`] (in 2PC the lookup runs on the fixed B of its key, with P1 and the
/// dealer as the two servers; in 3PC on the component P1 and P2 share). Rounds: 2 (the
/// DPF keys from P0, then the servers' rows); bytes: ~34 words per id plus count x h.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table [vocab, h].
    pub table: Matrix,
}

impl Embedding {
    /// An unshared table of `vocab` rows of `h`.
    pub fn new(vocab: usize, h: usize, keys: &mut Keys) -> Embedding {
        Embedding {
            table: Matrix::new(vocab, h, keys),
        }
    }
    /// Shares the model owner's table.
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, value: Option<&Tensor<f64>>) -> Result<()> {
        self.table.share(p, cx, value)
    }
    /// Rows `ids` ([`super::DATA_OWNER`] passes `Some`, the others `None`; `count` is
    /// public) as [count, h].
    pub fn forward(
        &self,
        p: &mut Party,
        cx: &mut Cx,
        ids: Option<&[u32]>,
        count: usize,
    ) -> Result<Shared> {
        cx.lookup(p, &self.table, ids, count)
    }
}

/// A secret table read at public indices (local row selection; no rounds).
#[derive(Clone, Debug)]
pub struct PublicIndexTable {
    /// Rows.
    pub rows: usize,
    /// Row width.
    pub cols: usize,
    t: Option<Shared>,
}

impl PublicIndexTable {
    /// An unshared table.
    pub fn new(rows: usize, cols: usize) -> PublicIndexTable {
        PublicIndexTable {
            rows,
            cols,
            t: None,
        }
    }
    /// Shares the model owner's table (no material; nothing when planning).
    pub fn share(&mut self, p: &mut Party, cx: &mut Cx, value: Option<&Tensor<f64>>) -> Result<()> {
        if cx.is_planning() {
            return Ok(());
        }
        let v = value.filter(|_| p.id() == MODEL_OWNER);
        if let Some(v) = v {
            if v.shape() != [self.rows, self.cols] {
                return Err(Error::shape(
                    "table",
                    format!("{:?} for a {} x {} table", v.shape(), self.rows, self.cols),
                ));
            }
        }
        self.t = Some(super::share_f64(p, v, &[self.rows, self.cols])?);
        Ok(())
    }
    /// Rows `idx` (public) as [idx.len(), cols] (zeros when planning).
    pub fn rows_at(&self, p: &Party, cx: &Cx, idx: &[usize]) -> Result<Shared> {
        if cx.is_planning() {
            return Ok(Shared::zeros(p, &[idx.len(), self.cols]));
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.rows) {
            return Err(Error::shape(
                "table",
                format!("row {bad} of a table of {} rows", self.rows),
            ));
        }
        let t = self
            .t
            .as_ref()
            .ok_or_else(|| Error::Unsupported("table used before it was shared".into()))?;
        let c = self.cols;
        t.try_map_local(|x| {
            let mut out = Vec::with_capacity(idx.len() * c);
            for &i in idx {
                out.extend_from_slice(&x.data()[i * c..(i + 1) * c]);
            }
            Tensor::from_vec(&[idx.len(), c], out)
        })
    }
}
