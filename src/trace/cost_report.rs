//! `qwen3-mpi trace fit-cost`: the chunk cost model fitted on traces (`trace::cost_fit`), the
//! rates it gives, the products' efficiency by chunk length (rows), and each trace's TTFT
//! predicted from the fit beside the one it measured.

use anyhow::{bail, Context, Result};

use super::cost_fit::{fit, layer_spans, Coefficients, LayerSpan};
use super::read::TraceView;
use crate::model::Qwen3Config;
use crate::schedule::chunk_cost::{attention_flops_per_pair, dense_layer_flops_per_token};
use crate::schedule::{chunks_of_lengths, predict_prefill, DeviceRates, HopCost, JobCost, LayerSplit};
use crate::units::flops;

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
        attention_fill: fit.attention_fill_rows * cfg.num_attention_heads as f64,
        floor_s: fit.floor_s,
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
    let mut lengths: Vec<usize> = spans.iter().map(|s| s.len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.len() < 3 {
        // four unknowns from one or two lengths: the fixed cost and the products trade off
        out.push_str(&format!(
            "note: the spans have {} chunk length(s); with fewer than 3 the fit cannot tell the fixed cost from the products' (trace runs at more --chunk-size values)\n",
            lengths.len()
        ));
    }
    let c = &coefficients;
    out.push_str(&format!(
        "fit over {} LayerCompute spans of {} traces (hidden {}, {} layers):\n  products {:.3e} s a token a layer ({}), fill rows {:.0} (half speed), attention {:.3e} s a pair ({}, slower below {:.0} query rows), fixed {:.1} µs a layer and chunk, floor {:.1} µs\n",
        spans.len(),
        traces.len(),
        cfg.hidden_size,
        cfg.num_hidden_layers,
        c.per_token_s,
        flops(rates.product_flops),
        c.fill_rows(),
        c.per_pair_s,
        flops(rates.attention_flops),
        c.attention_fill_rows,
        c.fixed_s * 1e6,
        c.floor_s * 1e6,
    ));
    out.push_str(&format!(
        "  as DeviceRates: product_flops {:.3e}, fill_rows {:.1}, attention_flops {:.3e}, attention_fill {:.0}, floor_s {:.2e}, fixed_s {:.2e}\n",
        rates.product_flops, rates.fill_rows, rates.attention_flops, rates.attention_fill, rates.floor_s, rates.fixed_s
    ));
    out.push_str(
        "by chunk length: spans, measured and fitted ms a layer (mean), products' speed against full\n",
    );
    for len in lengths {
        let of_len: Vec<&LayerSpan> = spans.iter().filter(|s| s.len == len).collect();
        let mean =
            |f: &dyn Fn(&LayerSpan) -> f64| of_len.iter().map(|s| f(s)).sum::<f64>() / of_len.len() as f64;
        let measured = mean(&|s| s.seconds);
        let fitted = mean(&|s| c.layer_s(s));
        // the products' share of the measured time, at full speed
        let products = mean(&|s| c.products_s(s));
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
