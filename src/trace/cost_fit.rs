//! The chunk cost model (`schedule::chunk_cost`) fitted on the `LayerCompute` spans of
//! finished traces: what `DeviceRates` constants are made of (`trace::cost_report` prints the
//! fit for `qwen3-mpi trace fit-cost`).
//!
//! Each span is one decoder layer of one chunk: `n` positions from `s`, `t` seconds. The fit
//! is of `t = max(floor, fixed + a·n + c·n^-½ + b·(n·s + n(n+1)/2)·max(1, F/n))` with every
//! coefficient ≥ 0, in relative error (each span weighs as much as any other, short or long):
//! `a` is the products' time a token at full speed, `c = a·fill_rows^1.5` their loss on few
//! rows, `b` attention's time a (query, key) pair, `F` the query rows below which attention
//! slows in proportion, `floor` the least a layer takes. For each `F` and `floor` of a grid
//! (floors: each length's fastest spans), the linear unknowns are solved on the spans above
//! the floor by trying each subset of them (least squares by hand: four unknowns need no
//! linear-algebra crate) and keeping the best fit whose coefficients are all non-negative; a
//! floor or an `F` is kept only where it lowers the error by a tenth.

use anyhow::{bail, Context, Result};

use super::read::TraceView;
use super::spans::SpanKind;
use crate::schedule::chunks_of_lengths;

/// One decoder layer of one chunk, as a trace measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpan {
    pub len: usize,
    pub start: usize,
    pub seconds: f64,
}

impl LayerSpan {
    fn pairs(&self) -> f64 {
        let n = self.len as f64;
        n * self.start as f64 + n * (n + 1.0) / 2.0
    }

    /// Pairs weighted by attention's slowdown on fewer than `fill_rows` queries.
    fn attention_pairs(&self, fill_rows: f64) -> f64 {
        self.pairs() * (fill_rows / self.len as f64).max(1.0)
    }
}

/// The fitted coefficients (seconds per layer; zero where the traces did not need one).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Coefficients {
    pub fixed_s: f64,
    pub per_token_s: f64,
    /// `c = a · fill_rows^1.5`.
    pub fill_s: f64,
    pub per_pair_s: f64,
    /// Query rows below which attention slows in proportion.
    pub attention_fill_rows: f64,
    pub floor_s: f64,
}

impl Coefficients {
    pub fn layer_s(&self, span: &LayerSpan) -> f64 {
        let n = span.len as f64;
        let linear = self.fixed_s
            + self.per_token_s * n
            + self.fill_s / n.sqrt()
            + self.per_pair_s * span.attention_pairs(self.attention_fill_rows);
        linear.max(self.floor_s)
    }

    /// The span's time less the fixed cost and attention: what the products took.
    pub fn products_s(&self, span: &LayerSpan) -> f64 {
        span.seconds - self.fixed_s - self.per_pair_s * span.attention_pairs(self.attention_fill_rows)
    }

    /// Rows at which the products run at half speed.
    pub fn fill_rows(&self) -> f64 {
        match self.per_token_s > 0.0 {
            true => (self.fill_s / self.per_token_s).powf(2.0 / 3.0),
            false => 0.0,
        }
    }
}

/// Every `LayerCompute` span of `trace`, with its chunk's length and start.
pub fn layer_spans(trace: &TraceView) -> Result<Vec<LayerSpan>> {
    let shown = trace.path.display();
    if trace.chunk_lengths.is_empty() {
        bail!("{shown}: no `chunk_lengths` attribute");
    }
    let chunks = chunks_of_lengths(&trace.chunk_lengths);
    let mut spans = Vec::new();
    for rank_spans in &trace.spans {
        for span in rank_spans.iter().filter(|s| s.kind == SpanKind::LayerCompute) {
            let chunk = usize::try_from(span.chunk)
                .ok()
                .filter(|&c| c < chunks.len())
                .with_context(|| {
                    format!(
                        "{shown}: a LayerCompute span of chunk {}, outside the chunks",
                        span.chunk
                    )
                })?;
            spans.push(LayerSpan {
                len: chunks[chunk].len(),
                start: chunks[chunk].start,
                seconds: (span.t_end_ns - span.t_start_ns) as f64 * 1e-9,
            });
        }
    }
    Ok(spans)
}

/// Attention fills tried (query rows; 0: none), in half octaves.
const ATTENTION_FILLS: [f64; 14] = [
    0.0, 32.0, 45.0, 64.0, 91.0, 128.0, 181.0, 256.0, 362.0, 512.0, 724.0, 1024.0, 1448.0, 2048.0,
];

/// A floor or an attention fill is kept only where it lowers the error by this fraction.
const SIMPLER_WINS: f64 = 0.1;

/// The best non-negative fit of `spans` (see the module docs).
pub fn fit(spans: &[LayerSpan]) -> Result<Coefficients> {
    let spans: Vec<&LayerSpan> = spans.iter().filter(|s| s.seconds > 0.0 && s.len > 0).collect();
    if spans.is_empty() {
        bail!("no LayerCompute spans to fit");
    }
    let error = |c: &Coefficients| -> f64 {
        spans
            .iter()
            .map(|s| (c.layer_s(s) / s.seconds - 1.0).powi(2))
            .sum()
    };
    let mut best: Option<(f64, Coefficients)> = None;
    for floor_s in floor_candidates(&spans) {
        let above: Vec<&LayerSpan> = spans
            .iter()
            .copied()
            .filter(|s| s.seconds > floor_s * 1.05)
            .collect();
        if above.is_empty() {
            continue;
        }
        for attention_fill_rows in ATTENTION_FILLS {
            let Some(linear) = fit_linear(&above, attention_fill_rows) else {
                continue;
            };
            let candidate = Coefficients {
                attention_fill_rows,
                floor_s,
                ..linear
            };
            let e = error(&candidate);
            // the simpler fit (no floor, no attention fill: the grid's first) wins near-ties
            let simpler = |c: &Coefficients| (c.floor_s > 0.0) as u8 + (c.attention_fill_rows > 0.0) as u8;
            let better = match &best {
                None => true,
                Some((best_e, b)) if simpler(&candidate) > simpler(b) => e < best_e * (1.0 - SIMPLER_WINS),
                Some((best_e, _)) => e < best_e * (1.0 - 1e-9),
            };
            if better {
                best = Some((e, candidate));
            }
        }
    }
    Ok(best.context("no non-negative fit of the spans")?.1)
}

/// Floors tried: none, and each chunk length's fastest spans (its 5th percentile).
fn floor_candidates(spans: &[&LayerSpan]) -> Vec<f64> {
    let mut lengths: Vec<usize> = spans.iter().map(|s| s.len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut floors = vec![0.0];
    for len in lengths {
        let mut times: Vec<f64> = spans.iter().filter(|s| s.len == len).map(|s| s.seconds).collect();
        times.sort_by(f64::total_cmp);
        floors.push(times[times.len() / 20]);
    }
    floors
}

/// The linear unknowns (fixed, a, c, b) at attention fill `fill_rows`: the best non-negative
/// least squares over the subsets of unknowns (`c` only with `a`: a loss on few rows needs
/// products to lose it from).
fn fit_linear(spans: &[&LayerSpan], fill_rows: f64) -> Option<Coefficients> {
    // each span's features over its own time: relative error
    let rows: Vec<[f64; 4]> = spans
        .iter()
        .map(|s| {
            let n = s.len as f64;
            [1.0, n, 1.0 / n.sqrt(), s.attention_pairs(fill_rows)].map(|f| f / s.seconds)
        })
        .collect();
    let mut best: Option<(f64, [f64; 4])> = None;
    for subset in 1u32..16 {
        if subset & 0b100 != 0 && subset & 0b010 == 0 {
            continue;
        }
        let columns: Vec<usize> = (0..4).filter(|c| subset & (1 << c) != 0).collect();
        let Some(solution) = least_squares(&rows, &columns) else {
            continue;
        };
        if solution.iter().any(|&x| x < 0.0) {
            continue;
        }
        let mut coefficients = [0.0; 4];
        for (&c, &x) in columns.iter().zip(&solution) {
            coefficients[c] = x;
        }
        let error: f64 = rows
            .iter()
            .map(|r| (r.iter().zip(&coefficients).map(|(f, x)| f * x).sum::<f64>() - 1.0).powi(2))
            .sum();
        if best.is_none_or(|(e, _)| error < e * (1.0 - 1e-9)) {
            best = Some((error, coefficients));
        }
    }
    let (_, [fixed_s, per_token_s, fill_s, per_pair_s]) = best?;
    Some(Coefficients {
        fixed_s,
        per_token_s,
        fill_s,
        per_pair_s,
        attention_fill_rows: 0.0,
        floor_s: 0.0,
    })
}

/// Least squares of `rows · x ≈ 1` on `columns`: the normal equations by Gaussian elimination;
/// `None` where they are singular (the traces cannot tell those unknowns apart).
fn least_squares(rows: &[[f64; 4]], columns: &[usize]) -> Option<Vec<f64>> {
    let k = columns.len();
    // scale each column to unit size so that the pivots compare
    let scale: Vec<f64> = columns
        .iter()
        .map(|&c| rows.iter().map(|r| r[c] * r[c]).sum::<f64>().sqrt())
        .collect();
    if scale.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return None;
    }
    let mut m = vec![vec![0.0; k + 1]; k];
    for r in rows {
        for i in 0..k {
            let fi = r[columns[i]] / scale[i];
            for j in 0..k {
                m[i][j] += fi * r[columns[j]] / scale[j];
            }
            m[i][k] += fi;
        }
    }
    for col in 0..k {
        let pivot = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-10 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (_, values) in m.iter_mut().enumerate().filter(|(row, _)| *row != col) {
            let factor = values[col] / pivot_row[col];
            for (value, p) in values.iter_mut().zip(&pivot_row).skip(col) {
                *value -= factor * p;
            }
        }
    }
    Some((0..k).map(|i| m[i][k] / m[i][i] / scale[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The span of `len` positions from `start` that coefficients `truth` say it takes.
    fn made_by(truth: &Coefficients, len: usize, start: usize) -> LayerSpan {
        let span = LayerSpan {
            len,
            start,
            seconds: 0.0,
        };
        LayerSpan {
            seconds: truth.layer_s(&span),
            ..span
        }
    }

    /// Spans made from known coefficients are fitted back to them.
    #[test]
    fn the_fit_recovers_the_coefficients_it_was_made_from() {
        let truth = Coefficients {
            fixed_s: 5e-6,
            per_token_s: 5.8e-7,
            fill_s: 5.8e-7 * 64f64.powf(1.5),
            per_pair_s: 3.4e-11,
            ..Coefficients::default()
        };
        let spans: Vec<LayerSpan> = [
            (256, 0),
            (512, 512),
            (1024, 0),
            (1024, 3072),
            (4096, 0),
            (2048, 8192),
        ]
        .iter()
        .map(|&(len, start)| made_by(&truth, len, start))
        .collect();
        let fitted = fit(&spans).unwrap();
        for (got, want) in [
            (fitted.fixed_s, truth.fixed_s),
            (fitted.per_token_s, truth.per_token_s),
            (fitted.fill_s, truth.fill_s),
            (fitted.per_pair_s, truth.per_pair_s),
        ] {
            assert!((got / want - 1.0).abs() < 1e-6, "{fitted:?}");
        }
        assert!((fitted.fill_rows() - 64.0).abs() < 1e-3);
    }

    /// A floor and attention's slowdown on few queries (the 0.6B shape's short chunks on an
    /// H200) are found back from spans made with them, over chunks of 64 to 4,096 at every start
    /// of a 16K prompt.
    #[test]
    fn the_fit_finds_a_floor_and_attentions_slowdown_on_few_queries() {
        let truth = Coefficients {
            fixed_s: 20e-6,
            per_token_s: 4.7e-8,
            fill_s: 4.7e-8 * 256f64.powf(1.5),
            per_pair_s: 1.3e-11,
            attention_fill_rows: 724.0,
            floor_s: 115e-6,
        };
        let spans: Vec<LayerSpan> = [64, 128, 256, 512, 1024, 2048, 4096]
            .iter()
            .flat_map(|&len| (0..16384 / len).map(move |c| (len, c * len)))
            .map(|(len, start)| made_by(&truth, len, start))
            .collect();
        // some of the short chunks sit on the floor, some above it
        assert!(spans.iter().any(|s| s.seconds == truth.floor_s));
        assert!(spans
            .iter()
            .any(|s| s.len == 128 && s.seconds > 1.5 * truth.floor_s));
        let fitted = fit(&spans).unwrap();
        assert_eq!(
            fitted.attention_fill_rows, truth.attention_fill_rows,
            "{fitted:?}"
        );
        assert!((fitted.floor_s / truth.floor_s - 1.0).abs() < 1e-6, "{fitted:?}");
        for s in &spans {
            assert!(
                (fitted.layer_s(s) / s.seconds - 1.0).abs() < 1e-3,
                "{s:?}: {fitted:?}"
            );
        }
        // and spans without either give a fit without either
        let plain = Coefficients {
            attention_fill_rows: 0.0,
            floor_s: 0.0,
            ..truth
        };
        let plain_spans: Vec<LayerSpan> = spans
            .iter()
            .map(|s| LayerSpan {
                seconds: plain.layer_s(s),
                ..*s
            })
            .collect();
        let fitted = fit(&plain_spans).unwrap();
        assert_eq!(
            (fitted.attention_fill_rows, fitted.floor_s),
            (0.0, 0.0),
            "{fitted:?}"
        );
    }

    /// One chunk length at position 0 cannot tell the fixed cost from the products: the fit
    /// holds what it cannot see at zero and still reproduces the spans.
    #[test]
    fn spans_of_one_length_give_a_fit_that_reproduces_them() {
        let spans = [LayerSpan {
            len: 1024,
            start: 0,
            seconds: 6.2e-4,
        }; 3];
        let fitted = fit(&spans).unwrap();
        assert!(
            (fitted.layer_s(&spans[0]) / 6.2e-4 - 1.0).abs() < 1e-9,
            "{fitted:?}"
        );
        assert!(fit(&[]).is_err());
    }
}
