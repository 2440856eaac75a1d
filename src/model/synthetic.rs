//! Deterministic synthetic weights: every tensor is a pure function of (seed, tensor name, shape).
//!
//! The same generator is implemented in `tests/fixtures/make_fixtures.py` (numpy), so the
//! reference fixtures can record Hugging Face outputs without committing 150k-row embedding
//! tables: both sides regenerate identical weights bit for bit.
//!
//! Element `i` of tensor `name` is `u(i) * scale(name, shape)` (in f32) where
//! `u(i) = top24(splitmix64(fnv1a64(name) ^ seed, i)) / 2^23 - 1`, exactly representable in f32.
//! Scales: `*norm.weight` → `1 + u/4` (norm weights near one), `embed_tokens` → `u/20`,
//! `lm_head` → `u`,
//! any other matrix → `u / sqrt(fan_in)` with fan_in the last dimension.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64 bit: a stable hash of the tensor name (and, elsewhere, of bytes to compare
/// across ranks).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64 output number `index` of the stream that starts at `state`.
pub fn splitmix64(state: u64, index: u64) -> u64 {
    let mut z = state.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the values of one tensor are scaled, from its checkpoint key.
fn scale_rule(name: &str, shape: &[usize]) -> (f32, f32) {
    // (offset, scale): value = offset + u * scale
    if name.ends_with("norm.weight") {
        (1.0, 0.25)
    } else if name.ends_with("embed_tokens.weight") {
        // small, so the residual stream is not dominated by the input token (tied models would
        // otherwise just repeat the last prompt token)
        (0.0, 0.05)
    } else if name.ends_with("lm_head.weight") {
        (0.0, 1.0)
    } else {
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        (0.0, 1.0f32 / fan_in.sqrt())
    }
}

/// The values of tensor `name` with `shape`, row-major, as f32.
pub fn tensor_values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let stream = fnv1a64(name.as_bytes()) ^ seed;
    let (offset, scale) = scale_rule(name, shape);
    let len: usize = shape.iter().product();
    (0..len as u64)
        .map(|i| {
            let bits = (splitmix64(stream, i) >> 40) as f32; // top 24 bits, exact in f32
            let u = bits / 8_388_608.0 - 1.0; // [-1, 1)
            if offset == 0.0 {
                u * scale
            } else {
                offset + u * scale
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_on_name_and_seed_and_are_bounded() {
        let a = tensor_values(1, "model.layers.0.mlp.up_proj.weight", &[4, 16]);
        let b = tensor_values(1, "model.layers.1.mlp.up_proj.weight", &[4, 16]);
        let c = tensor_values(2, "model.layers.0.mlp.up_proj.weight", &[4, 16]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| v.abs() <= 0.25));
        let norm = tensor_values(1, "model.norm.weight", &[64]);
        assert!(norm.iter().all(|v| (0.75..=1.25).contains(v)));
    }

    #[test]
    fn values_match_the_python_generator() {
        // Lines `seed|name|shape|values` written by `make_fixtures.py --selftest` with numpy.
        let text = include_str!("../../tests/fixtures/generator_selftest.txt");
        for line in text.lines().filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split('|').collect();
            let seed: u64 = fields[0].parse().unwrap();
            let shape: Vec<usize> = fields[2].split(',').map(|d| d.parse().unwrap()).collect();
            let want: Vec<f32> = fields[3].split_whitespace().map(|v| v.parse().unwrap()).collect();
            assert_eq!(tensor_values(seed, fields[1], &shape), want, "{}", fields[1]);
        }
    }
}
