//! The plaintext f64 forward pass of a BERT encoder: the reference that secure results
//! are checked against, written to match Hugging Face's `BertModel` (eval mode) and the
//! sentence-transformers pipeline of all-MiniLM-L6-v2 (mean pooling, L2 normalisation).
//!
//! The small pieces the secure encoder mirrors ([`layer_norm_rows`], [`softmax_rows`],
//! [`gelu_exact`], [`erf`]) are public so tests of the secure protocols can use them.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use tessera::{Error, Result, Tensor};

use super::model::{BertConfig, BertWeights, LayerWeights};
use super::tokenize::Encoded;

/// The additive attention mask Hugging Face BERT puts on padded key positions:
/// `(1 - mask) * MASK_BIAS` is added to the scores before the softmax.
pub const MASK_BIAS: f64 = -10000.0;

/// Terms of the continued fraction for erfc (enough for full double precision at x >= 2).
const ERFC_CF_TERMS: usize = 80;

/// Below this |x| erf is summed as a series, above it erfc comes from a continued fraction.
const ERF_SERIES_LIMIT: f64 = 2.0;

/// erf(x) = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1} / (1 3 5 ... (2n+1)): all terms have the
/// sign of x, so there is no cancellation. For |x| < 2 (at most ~35 terms).
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() {
        term *= 2.0 * x2 / (2.0 * n + 3.0);
        sum += term;
        n += 1.0;
    }
    2.0 / PI.sqrt() * (-x2).exp() * sum
}

/// erfc(x) for x >= 2 by the continued fraction
/// erfc(x) = e^{-x^2}/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated
/// backwards from a fixed depth.
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut t = x;
    for k in (1..=ERFC_CF_TERMS).rev() {
        t = x + (k as f64 / 2.0) / t;
    }
    (-x * x).exp() / PI.sqrt() / t
}

/// The error function in double precision (absolute error below 1e-15 everywhere).
///
/// A positive-term series for |x| < 2 and `1 - erfc(|x|)` from a continued fraction
/// above.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x.abs() < ERF_SERIES_LIMIT {
        erf_series(x)
    } else {
        (1.0 - erfc_continued_fraction(x.abs())).copysign(x)
    }
}

/// The complementary error function 1 - erf(x), with small relative error in the right
/// tail (x >= 2), where `1 - erf(x)` would cancel.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x >= ERF_SERIES_LIMIT {
        erfc_continued_fraction(x)
    } else if x <= -ERF_SERIES_LIMIT {
        2.0 - erfc_continued_fraction(-x)
    } else {
        1.0 - erf_series(x)
    }
}

/// The exact GeLU of BERT (`hidden_act = "gelu"`): x/2 (1 + erf(x/sqrt 2)), computed as
/// x/2 erfc(-x/sqrt 2) so the negative tail keeps its relative precision.
pub fn gelu_exact(x: f64) -> f64 {
    0.5 * x * erfc(-x * FRAC_1_SQRT_2)
}

/// LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * g + b` with the biased
/// (population) variance, as PyTorch's `nn.LayerNorm`.
///
/// # Panics
/// If `g` or `b` is not as long as the last axis of `x`.
pub fn layer_norm_rows(x: &Tensor<f64>, g: &[f64], b: &[f64], eps: f64) -> Tensor<f64> {
    let d = x.last_dim();
    assert!(
        g.len() == d && b.len() == d,
        "layer_norm_rows: rows of length {d}, gamma {} and beta {}",
        g.len(),
        b.len()
    );
    let mut out = x.clone();
    if d == 0 {
        return out;
    }
    for row in out.data_mut().chunks_mut(d) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &gi), &bi) in row.iter_mut().zip(g).zip(b) {
            *v = (*v - mean) * inv * gi + bi;
        }
    }
    out
}

/// Softmax over the last axis, with the row maximum subtracted first.
pub fn softmax_rows(x: &Tensor<f64>) -> Tensor<f64> {
    let d = x.last_dim();
    let mut out = x.clone();
    if d == 0 {
        return out;
    }
    for row in out.data_mut().chunks_mut(d) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    out
}

/// Checks that `enc` fits the model: the three vectors of equal length, at most
/// `max_position` tokens, ids below `vocab_size`, type ids below `type_vocab_size`, mask
/// entries 0 or 1 with at least one 1.
pub fn check_input(config: &BertConfig, enc: &Encoded) -> Result<()> {
    let n = enc.ids.len();
    if enc.type_ids.len() != n || enc.attention_mask.len() != n {
        return Err(Error::shape(
            "bert input",
            format!(
                "ids {}, type_ids {}, attention_mask {}: lengths differ",
                n,
                enc.type_ids.len(),
                enc.attention_mask.len()
            ),
        ));
    }
    if n == 0 || n > config.max_position {
        return Err(Error::shape(
            "bert input",
            format!(
                "{n} tokens; the model takes 1..={} (max_position_embeddings)",
                config.max_position
            ),
        ));
    }
    if let Some((i, id)) = enc
        .ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= config.vocab_size)
    {
        return Err(Error::shape(
            "bert input",
            format!("token {i} has id {id}, vocab_size is {}", config.vocab_size),
        ));
    }
    if let Some((i, t)) = enc
        .type_ids
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= config.type_vocab_size)
    {
        return Err(Error::shape(
            "bert input",
            format!(
                "token {i} has type id {t}, type_vocab_size is {}",
                config.type_vocab_size
            ),
        ));
    }
    if enc.attention_mask.iter().any(|&m| m > 1) || !enc.attention_mask.contains(&1) {
        return Err(Error::shape(
            "bert input",
            format!(
                "attention_mask must be 0/1 with at least one 1, got {:?}",
                enc.attention_mask
            ),
        ));
    }
    Ok(())
}

/// Gathers `rows` of a `[n, d]` table into a `[rows.len(), d]` tensor.
fn gather_rows(table: &Tensor<f64>, rows: impl Iterator<Item = usize>) -> Vec<f64> {
    let d = table.last_dim();
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(&table.data()[r * d..(r + 1) * d]);
    }
    out
}

/// `x @ w + b` for `x: [n, in]`, `w: [in, out]`, `b: [out]`.
fn linear(x: &Tensor<f64>, w: &Tensor<f64>, b: &[f64]) -> Tensor<f64> {
    x.matmul(w)
        .and_then(|y| y.zip_rows(b, "bert linear", |a, c| a + c))
        .expect("weight shapes are checked at load")
}

fn add(a: &Tensor<f64>, b: &Tensor<f64>) -> Tensor<f64> {
    a.zip_with(b, "bert residual", |x, y| x + y)
        .expect("residual shapes agree")
}

/// The embedding block: word + position + token type, then LayerNorm. `[seq, hidden]`.
pub fn embeddings(w: &BertWeights, enc: &Encoded) -> Tensor<f64> {
    let (n, h) = (enc.ids.len(), w.config.hidden);
    let word = gather_rows(&w.word_emb, enc.ids.iter().map(|&i| i as usize));
    let pos = gather_rows(&w.pos_emb, 0..n);
    let typ = gather_rows(&w.type_emb, enc.type_ids.iter().map(|&t| t as usize));
    let sum: Vec<f64> = word
        .iter()
        .zip(&pos)
        .zip(&typ)
        .map(|((a, b), c)| a + b + c)
        .collect();
    let x = Tensor::from_vec(&[n, h], sum).expect("embedding rows");
    layer_norm_rows(&x, &w.emb_ln_g, &w.emb_ln_b, w.config.layer_norm_eps)
}

/// Multi-head self-attention of one layer up to (not including) the output projection:
/// the per-head contexts concatenated, `[seq, hidden]`.
pub fn attention_context(
    config: &BertConfig,
    layer: &LayerWeights,
    x: &Tensor<f64>,
    attention_mask: &[u32],
) -> Tensor<f64> {
    let n = x.shape()[0];
    let (h, heads, d) = (config.hidden, config.heads, config.head_dim());
    let q = linear(x, &layer.wq, &layer.bq);
    let k = linear(x, &layer.wk, &layer.bk);
    let v = linear(x, &layer.wv, &layer.bv);
    let scale = 1.0 / (d as f64).sqrt();
    let mut context = vec![0.0; n * h];
    for head in 0..heads {
        let cols = head * d..(head + 1) * d;
        let mut scores = vec![0.0; n * n];
        for i in 0..n {
            let qi = &q.data()[i * h..][cols.clone()];
            for j in 0..n {
                let kj = &k.data()[j * h..][cols.clone()];
                let dot: f64 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                scores[i * n + j] = dot * scale + (1.0 - f64::from(attention_mask[j])) * MASK_BIAS;
            }
        }
        let probs = softmax_rows(&Tensor::from_vec(&[n, n], scores).expect("scores"));
        for i in 0..n {
            let out = &mut context[i * h..][cols.clone()];
            for j in 0..n {
                let p = probs.data()[i * n + j];
                let vj = &v.data()[j * h..][cols.clone()];
                for (o, &vv) in out.iter_mut().zip(vj) {
                    *o += p * vv;
                }
            }
        }
    }
    Tensor::from_vec(&[n, h], context).expect("context")
}

/// One encoder layer: attention, output projection, residual, LayerNorm; feed-forward
/// with exact GeLU, residual, LayerNorm.
pub fn encoder_layer(
    config: &BertConfig,
    layer: &LayerWeights,
    x: &Tensor<f64>,
    attention_mask: &[u32],
) -> Tensor<f64> {
    let eps = config.layer_norm_eps;
    let ctx = attention_context(config, layer, x, attention_mask);
    let attn = linear(&ctx, &layer.wo, &layer.bo);
    let x1 = layer_norm_rows(&add(&attn, x), &layer.ln1_g, &layer.ln1_b, eps);
    let inner = linear(&x1, &layer.w1, &layer.b1).map(gelu_exact);
    let out = linear(&inner, &layer.w2, &layer.b2);
    layer_norm_rows(&add(&out, &x1), &layer.ln2_g, &layer.ln2_b, eps)
}

/// The last hidden state `[seq, hidden]` of the encoder on one tokenised input.
///
/// # Panics
/// If `enc` does not fit the model (see [`check_input`], which returns the same
/// condition as an error).
pub fn forward(w: &BertWeights, enc: &Encoded) -> Tensor<f64> {
    if let Err(e) = check_input(&w.config, enc) {
        panic!("bert forward: {e}");
    }
    let mut x = embeddings(w, enc);
    for layer in &w.layers {
        x = encoder_layer(&w.config, layer, &x, &enc.attention_mask);
    }
    x
}

/// Mean of the rows of `hidden` whose mask is 1 (sentence-transformers mean pooling).
pub fn mean_pool(hidden: &Tensor<f64>, attention_mask: &[u32]) -> Vec<f64> {
    let d = hidden.last_dim();
    let mut sum = vec![0.0; d];
    let mut count = 0.0;
    for (row, &m) in hidden.data().chunks(d.max(1)).zip(attention_mask) {
        if m == 1 {
            count += 1.0;
            for (s, v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
    // sentence-transformers clamps the token count at 1e-9.
    let count = f64::max(count, 1e-9);
    sum.iter().map(|s| s / count).collect()
}

/// Divides by the Euclidean norm (floored at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(v: &[f64]) -> Vec<f64> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// The sentence embedding of all-MiniLM-L6-v2's pipeline: [`forward`], mean pooling over
/// the tokens with mask 1, L2 normalisation. Length `hidden`, unit norm.
///
/// # Panics
/// As [`forward`].
pub fn sentence_embedding(w: &BertWeights, enc: &Encoded) -> Vec<f64> {
    let hidden = forward(w, enc);
    l2_normalize(&mean_pool(&hidden, &enc.attention_mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::tokenize::demo_tokenize;

    #[test]
    fn erf_matches_known_values() {
        // Reference values of erf / erfc (correctly rounded).
        let erf_values = [
            (0.0, 0.0),
            (1e-10, 1.1283791670955126e-10),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.5, 0.9661051464753108),
            (1.9999, 0.9953201979070294),
            (2.0, 0.9953222650189527),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.9999779095030014),
            (4.0, 0.9999999845827421),
            (6.0, 1.0),
        ];
        for (x, want) in erf_values {
            let got = erf(x);
            assert!((got - want).abs() < 1e-12, "erf({x}) = {got}, want {want}");
            assert!((erf(-x) + want).abs() < 1e-12, "erf(-{x})");
        }
        let erfc_values = [
            (0.5, 0.4795001221869535),
            (2.0, 4.677734981047266e-03),
            (3.0, 2.209049699858544e-05),
            (5.0, 1.537_459_794_428_035e-12),
            (10.0, 2.088487583762545e-45),
            (-1.0, 1.8427007929497148),
        ];
        for (x, want) in erfc_values {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 1e-12,
                "erfc({x}) = {got:e}, want {want:e}"
            );
        }
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert_eq!(erf(f64::NEG_INFINITY), -1.0);
    }

    #[test]
    fn erf_is_continuous_at_the_switch() {
        let below = erf(ERF_SERIES_LIMIT - 1e-12);
        let above = erf(ERF_SERIES_LIMIT);
        assert!((above - below).abs() < 1e-13, "{below} vs {above}");
    }

    #[test]
    fn gelu_exact_known_values() {
        // x Phi(x) with Phi the standard normal CDF.
        let values = [
            (0.0, 0.0),
            (1.0, 0.8413447460685429),
            (-1.0, -0.15865525393145707),
            (2.0, 1.9544997361036416),
            (-3.0, -0.004049694094890287),
            (0.5, 0.34573123063700656),
            (-8.0, -4.9767684594174555e-15),
        ];
        for (x, want) in values {
            let got = gelu_exact(x);
            assert!(
                (got - want).abs() < 1e-12 && (want == 0.0 || ((got - want) / want).abs() < 1e-10),
                "gelu({x}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(gelu_exact(50.0), 50.0);
    }

    #[test]
    fn layer_norm_rows_normalises_each_row() {
        let x = Tensor::from_vec(&[2, 4], vec![1.0, 2.0, 3.0, 4.0, -2.0, 0.0, 0.0, 2.0]).unwrap();
        let g = [1.0, 2.0, 1.0, 0.5];
        let b = [0.0, 1.0, 0.0, -1.0];
        let y = layer_norm_rows(&x, &g, &b, 1e-12);
        // Row 0: mean 2.5, variance 1.25.
        let s = 1.25f64.sqrt();
        let want0 = [
            -1.5 / s,
            2.0 * (-0.5 / s) + 1.0,
            0.5 / s,
            0.5 * (1.5 / s) - 1.0,
        ];
        for (got, want) in y.data()[..4].iter().zip(want0) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // Unit gamma, zero beta: mean 0 and variance 1 per row.
        let y = layer_norm_rows(&x, &[1.0; 4], &[0.0; 4], 1e-12);
        for row in y.data().chunks(4) {
            let mean: f64 = row.iter().sum::<f64>() / 4.0;
            let var: f64 = row.iter().map(|v| v * v).sum::<f64>() / 4.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-10);
        }
        // A constant row maps to beta (eps keeps it finite).
        let c = Tensor::from_vec(&[1, 3], vec![7.0; 3]).unwrap();
        let y = layer_norm_rows(&c, &[1.0; 3], &[0.5; 3], 1e-5);
        assert!(y.data().iter().all(|&v| (v - 0.5).abs() < 1e-12));
    }

    #[test]
    fn softmax_rows_sums_to_one_and_is_shift_invariant() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0]).unwrap();
        let y = softmax_rows(&x);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        for row in y.data().chunks(3) {
            for (got, want) in row.iter().zip(&e) {
                assert!((got - want / s).abs() < 1e-15);
            }
        }
        let masked = Tensor::from_vec(&[1, 2], vec![0.0, MASK_BIAS]).unwrap();
        assert!(softmax_rows(&masked).data()[1] < 1e-300);
    }

    #[test]
    fn mask_excludes_padded_tokens() {
        let w = BertWeights::demo(&BertWeights::demo_config(), 3);
        let short = demo_tokenize("secure inference of a small model", 512, 16);
        let mut padded = short.clone();
        for _ in 0..3 {
            padded.ids.push(0);
            padded.type_ids.push(0);
            padded.attention_mask.push(0);
        }
        let a = forward(&w, &short);
        let b = forward(&w, &padded);
        // HF's additive mask leaves e^-10000-sized leakage: nothing visible in f64.
        for (x, y) in a.data().iter().zip(&b.data()[..a.len()]) {
            assert!((x - y).abs() < 1e-12);
        }
        let ea = sentence_embedding(&w, &short);
        let eb = sentence_embedding(&w, &padded);
        for (x, y) in ea.iter().zip(&eb) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn demo_forward_is_deterministic_and_in_range() {
        let w = BertWeights::demo(&BertWeights::demo_config(), 7);
        let enc = demo_tokenize("The quick brown fox jumps over the lazy dog", 512, 32);
        let out = forward(&w, &enc);
        assert_eq!(out.shape(), &[enc.ids.len(), 64]);
        assert_eq!(out, forward(&w, &enc));
        let max = out.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max.is_finite() && max < 20.0, "max activation {max}");
        let e = sentence_embedding(&w, &enc);
        let norm: f64 = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-12);
    }

    #[test]
    fn check_input_names_the_problem() {
        let c = BertWeights::demo_config();
        let mut enc = demo_tokenize("hello world", 512, 8);
        assert!(check_input(&c, &enc).is_ok());
        enc.ids[1] = 600;
        let e = check_input(&c, &enc).unwrap_err().to_string();
        assert!(e.contains("id 600") && e.contains("vocab_size"), "{e}");
        enc.ids[1] = 5;
        enc.type_ids.pop();
        let e = check_input(&c, &enc).unwrap_err().to_string();
        assert!(e.contains("type_ids"), "{e}");
        let long = demo_tokenize(&"word ".repeat(100), 512, 100);
        let e = check_input(&c, &long).unwrap_err().to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
    }
}
