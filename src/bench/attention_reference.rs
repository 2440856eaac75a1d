//! Attention in plain candle ops, for `bench-attention`: in f32 it is the reference every
//! backend is checked against; in the inputs' precision it is the `reference` backend (the
//! unfused path, `QWEN3_MPI_ATTENTION=reference`, timed beside the fused ones).

use candle_core::{DType, Device, Tensor};

/// Queries at `positions` over cache positions `[0, end)`, causal: a query at position p sees
/// keys ≤ p. Matmuls in q's precision, softmax in f32.
/// q: (R, H, D), positions: (R,) u32, k and v: (KVH, end, D) → (R, H, D)
pub fn attend(q: &Tensor, positions: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, heads, dim) = q.dims3()?;
    let (kv_heads, end, _) = k.dims3()?;
    let group = heads / kv_heads;

    // 1. The `group` query heads of each KV head stacked: (H, R, D) → (KVH, G*R, D)
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((kv_heads, group * rows, dim))?;
    let scale = 1.0 / (dim as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?; // (KVH, G*R, end)

    // 2. Causal mask per query row, softmax in f32
    let mask = causal_mask(positions, end, q.device())?; // (R, end)
    let scores = scores
        .reshape((kv_heads, group, rows, end))?
        .broadcast_add(&mask)?
        .reshape((kv_heads, group * rows, end))?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;

    // 3. Weighted values, back to (R, H, D)
    let out = probs.matmul(v)?; // (KVH, G*R, D)
    out.reshape((heads, rows, dim))?.transpose(0, 1)?.contiguous()
}

/// K and V of cache positions `[0, end)` of one layer, each (KVH, end, D), in `dtype`.
/// `layer_kv`: (capacity, 2, KVH, D)
pub fn keys_values(layer_kv: &Tensor, end: usize, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
    let prefix = layer_kv.narrow(0, 0, end)?; // (end, 2, KVH, D)
    let pick = |i: usize| -> candle_core::Result<Tensor> {
        prefix
            .narrow(1, i, 1)?
            .squeeze(1)?
            .to_dtype(dtype)?
            .transpose(0, 1)?
            .contiguous() // (KVH, end, D)
    };
    Ok((pick(0)?, pick(1)?))
}

/// The unfused path as the job's layer runs it: a chunk at `[start, start + L)`.
/// q: (L, H, D), `layer_kv`: (capacity, 2, KVH, D) → (L, H, D)
pub fn unfused_prefill(q: &Tensor, layer_kv: &Tensor, start: usize) -> candle_core::Result<Tensor> {
    let len = q.dim(0)?;
    let (k, v) = keys_values(layer_kv, start + len, q.dtype())?;
    let positions = Tensor::arange(start as u32, (start + len) as u32, q.device())?; // (L,)
    attend(q, &positions, &k, &v)
}

/// 0 where key ≤ the row's position, −∞ elsewhere: (R, end), f32.
fn causal_mask(positions: &Tensor, end: usize, device: &Device) -> candle_core::Result<Tensor> {
    let rows = positions.dim(0)?;
    let queries = positions.reshape((rows, 1))?; // (R, 1)
    let keys = Tensor::arange(0u32, end as u32, device)?.reshape((1, end))?; // (1, end)
    let visible = keys.broadcast_le(&queries)?; // (R, end), u8
    let zero = Tensor::zeros((rows, end), DType::F32, device)?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (rows, end), device)?;
    visible.where_cond(&zero, &hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU: the unfused path equals a direct loop over heads, queries and keys.
    #[test]
    fn unfused_prefill_matches_direct_sum() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let (len, start, heads, kv_heads, dim) = (3, 2, 4, 2, 8);
        let q = Tensor::randn(0f32, 1.0, (len, heads, dim), &device)?;
        let kv = Tensor::randn(0f32, 1.0, (start + len + 1, 2, kv_heads, dim), &device)?; // one spare position
        let out = unfused_prefill(&q, &kv, start)?.to_vec3::<f32>()?;
        let qv = q.to_vec3::<f32>()?;
        let kv_flat = kv.flatten_all()?.to_vec1::<f32>()?;
        let at =
            |p: usize, which: usize, h: usize, d: usize| kv_flat[((p * 2 + which) * kv_heads + h) * dim + d];
        for i in 0..len {
            for h in 0..heads {
                let kh = h / (heads / kv_heads);
                let visible = start + i + 1;
                let scores: Vec<f32> = (0..visible)
                    .map(|p| {
                        (0..dim).map(|d| qv[i][h][d] * at(p, 0, kh, d)).sum::<f32>() / (dim as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for (d, got) in out[i][h].iter().enumerate() {
                    let want: f32 = (0..visible).map(|p| weights[p] * at(p, 1, kh, d)).sum::<f32>() / total;
                    assert!((got - want).abs() < 1e-4, "row {i} head {h} dim {d}");
                }
            }
        }
        Ok(())
    }
}
