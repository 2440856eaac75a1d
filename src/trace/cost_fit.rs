//! `qwen3-mpi trace fit-cost`: the chunk cost model (`schedule::chunk_cost`) fitted on the
//! `LayerCompute` spans of finished traces, and each trace's TTFT predicted from the fit
//! beside the one it measured. Its output is what `DeviceRates` constants are made of, and
//! shows the products' efficiency by chunk length (rows).
//!
//! Each span is one decoder layer of one chunk: `n` positions from `s`, `t` seconds. The fit
//! is of `t = fixed + a·n + c·n^-½ + b·(n·s + n(n+1)/2)` with every coefficient ≥ 0, in
//! relative error (each span weighs as much as any other, short or long): `a` is the
//! products' time a token at full speed, `c = a·fill_rows^1.5` their loss on few rows, `b`
//! attention's time a (query, key) pair. The few unknowns are solved by trying each subset of
//! them (least squares by hand: four unknowns need no linear-algebra crate), keeping the best
//! fit whose coefficients are all non-negative.

use anyhow::{bail, Context, Result};

use super::read::TraceView;
use super::spans::SpanKind;
use crate::model::Qwen3Config;
use crate::schedule::chunk_cost::{attention_flops_per_pair, dense_layer_flops_per_token};
use crate::schedule::{chunks_of_lengths, predict_prefill, DeviceRates, HopCost, JobCost, LayerSplit};
use crate::units::flops;

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
}

/// The fitted coefficients (seconds per layer); `None` where the traces did not need it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Coefficients {
    pub fixed_s: f64,
    pub per_token_s: f64,
    /// `c = a · fill_rows^1.5`.
    pub fill_s: f64,
    pub per_pair_s: f64,
}

impl Coefficients {
    pub fn layer_s(&self, span: &LayerSpan) -> f64 {
        let n = span.len as f64;
        self.fixed_s + self.per_token_s * n + self.fill_s / n.sqrt() + self.per_pair_s * span.pairs()
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

/// The best non-negative fit of `spans` (see the module docs).
pub fn fit(spans: &[LayerSpan]) -> Result<Coefficients> {
    let spans: Vec<&LayerSpan> = spans.iter().filter(|s| s.seconds > 0.0 && s.len > 0).collect();
    if spans.is_empty() {
        bail!("no LayerCompute spans to fit");
    }
    // each span's features over its own time: relative error
    let rows: Vec<[f64; 4]> = spans
        .iter()
        .map(|s| {
            let n = s.len as f64;
            [1.0, n, 1.0 / n.sqrt(), s.pairs()].map(|f| f / s.seconds)
        })
        .collect();
    let mut best: Option<(f64, [f64; 4])> = None;
    for subset in 1u32..16 {
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
    let (_, [fixed_s, per_token_s, fill_s, per_pair_s]) = best.context("no non-negative fit of the spans")?;
    Ok(Coefficients {
        fixed_s,
        per_token_s,
        fill_s,
        per_pair_s,
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

/// The device class's rates with the fitted ones in their place, for `cfg`'s shape.
pub fn fitted_rates(fit: &Coefficients, cfg: &Qwen3Config, class: DeviceRates) -> DeviceRates {
    // a cost the fit held at zero is an infinite rate
    let rate = |fitted_s: f64, work: f64| {
        if fitted_s > 0.0 {
            work / fitted_s
        } else {
            f64::INFINITY
        }
    };
    DeviceRates {
        name: "rates fitted on the traces given",
        product_flops: rate(fit.per_token_s, dense_layer_flops_per_token(cfg)),
        fill_rows: class.fill_rows_from(fit.fill_rows(), cfg.hidden_size),
        attention_flops: rate(fit.per_pair_s, attention_flops_per_pair(cfg)),
        fixed_s: fit.fixed_s,
        ..class
    }
}

/// The whole report: the fit on `traces`, the efficiency by chunk length, and the TTFT of each
/// of `traces` and `predicted` against the prediction. All must be of one dense model on one
/// device class.
pub fn fit_report(traces: &[TraceView], predicted: &[TraceView]) -> Result<String> {
    let first = traces.first().context("no trace given")?;
    let cfg = first
        .model_config
        .clone()
        .with_context(|| format!("{}: no `model_config` attribute", first.path.display()))?;
    if cfg.moe.is_some() {
        bail!(
            "{}: a mixture-of-experts model; fit-cost fits dense layers only",
            first.path.display()
        );
    }
    let on_gpu = |trace: &TraceView| trace.device.as_deref().is_some_and(|d| d != "cpu");
    let on_gpu = match traces
        .iter()
        .chain(predicted)
        .find(|t| on_gpu(t) != on_gpu(first))
    {
        Some(other) => bail!(
            "{} and {} ran on different devices ({} and {}): fit traces of one device class at a time",
            first.path.display(),
            other.path.display(),
            first.device.as_deref().unwrap_or("unknown"),
            other.device.as_deref().unwrap_or("unknown")
        ),
        None => on_gpu(first),
    };
    // each trace's layer spans, read once: the fitted ones' for the fit, every one's for its line
    let mut read = Vec::new();
    for trace in traces.iter().chain(predicted) {
        if trace.model_config.as_ref() != Some(&cfg) {
            bail!(
                "{}: another model than {}'s (fit traces of one model at a time)",
                trace.path.display(),
                first.path.display()
            );
        }
        read.push((trace, layer_spans(trace)?));
    }
    let spans: Vec<LayerSpan> = read[..traces.len()]
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .collect();
    let coefficients = fit(&spans)?;
    let class = match on_gpu {
        true => DeviceRates::GPU,
        false => DeviceRates::CPU,
    };
    let rates = fitted_rates(&coefficients, &cfg, class);
    let mut out = String::new();
    let c = &coefficients;
    out.push_str(&format!(
        "fit over {} LayerCompute spans of {} traces (hidden {}, {} layers):\n  products {:.3e} s a token a layer ({}), fill rows {:.0} (half speed), attention {:.3e} s a pair ({}), fixed {:.1} µs a layer and chunk\n",
        spans.len(),
        traces.len(),
        cfg.hidden_size,
        cfg.num_hidden_layers,
        c.per_token_s,
        flops(rates.product_flops),
        c.fill_rows(),
        c.per_pair_s,
        flops(rates.attention_flops),
        c.fixed_s * 1e6,
    ));
    out.push_str(&format!(
        "  as DeviceRates: product_flops {:.3e}, fill_rows {:.1}, attention_flops {:.3e}, fixed_s {:.2e}\n",
        rates.product_flops, rates.fill_rows, rates.attention_flops, rates.fixed_s
    ));
    out.push_str(
        "by chunk length: spans, measured and fitted ms a layer (mean), products' speed against full\n",
    );
    let mut lengths: Vec<usize> = spans.iter().map(|s| s.len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let of_len: Vec<&LayerSpan> = spans.iter().filter(|s| s.len == len).collect();
        let mean =
            |f: &dyn Fn(&LayerSpan) -> f64| of_len.iter().map(|s| f(s)).sum::<f64>() / of_len.len() as f64;
        let measured = mean(&|s| s.seconds);
        let fitted = mean(&|s| c.layer_s(s));
        // the products' share of the measured time, at full speed
        let products = mean(&|s| s.seconds - c.fixed_s - c.per_pair_s * s.pairs());
        let full = c.per_token_s * len as f64;
        out.push_str(&format!(
            "  {len:>6} tokens  {:>5} spans  {:>9.3} {:>9.3}  {:>5.1} %\n",
            of_len.len(),
            measured * 1e3,
            fitted * 1e3,
            100.0 * full / products.max(f64::MIN_POSITIVE)
        ));
    }
    out.push_str(
        "TTFT measured against predicted (the fit, the class's memory rate, the trace's hidden-state path), and \
         how much longer its layers ran than the fit (on several ranks: the KV sync beside them):\n",
    );
    for (trace, layers) in &read {
        let hop = match (on_gpu, trace.hidden_transport.as_deref()) {
            (false, _) => HopCost::CPU,
            (true, Some("ipc")) => HopCost::GPU_IPC,
            (true, Some("device")) => HopCost::GPU_MPI,
            (true, _) => HopCost::GPU_HOST,
        };
        let dtype_bytes = match trace.dtype.as_deref() {
            Some("f32") => 4,
            _ => 2,
        };
        let cost = JobCost::new(&cfg, rates, hop, dtype_bytes);
        let counts: Vec<usize> = trace.layer_split.iter().map(|&c| c as usize).collect();
        let split = LayerSplit::from_counts(&counts, cfg.num_hidden_layers, counts.len())
            .with_context(|| format!("{}: layer_split", trace.path.display()))?;
        let chunks = chunks_of_lengths(&trace.chunk_lengths);
        let predicted = predict_prefill(&chunks, &split, &cost);
        let measured = trace.ttft_s.map_or("?".into(), |t| format!("{:.1} ms", t * 1e3));
        let (ran, fitted) = layers.iter().fold((0.0, 0.0), |(m, f), s| {
            (m + s.seconds, f + coefficients.layer_s(s))
        });
        out.push_str(&format!(
            "  {}: {} ranks, {} chunks: measured {measured}, predicted {:.1} ms; layers {:+.1} %\n",
            trace.path.display(),
            split.ranks(),
            chunks.len(),
            predicted.ttft_s * 1e3,
            100.0 * (ran / fitted - 1.0)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans made from known coefficients are fitted back to them.
    #[test]
    fn the_fit_recovers_the_coefficients_it_was_made_from() {
        let truth = Coefficients {
            fixed_s: 5e-6,
            per_token_s: 5.8e-7,
            fill_s: 5.8e-7 * 64f64.powf(1.5),
            per_pair_s: 3.4e-11,
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
        .map(|&(len, start)| {
            let mut span = LayerSpan {
                len,
                start,
                seconds: 0.0,
            };
            span.seconds = truth.layer_s(&span);
            span
        })
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
