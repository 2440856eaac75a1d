//! The decode step's kernel variants, each from a variable read at setup; every variant
//! computes the others' outputs bit for bit (the choice of the products' kernel is
//! `decode_gemv.rs`'s). Pure, so that it is tested without a GPU.
//!
//! - [`QkPlacement`] (`QWEN3_MPI_DECODE_QK`): where the q/k norm, RoPE and cache write run:
//!   `fused` (the default since the eleventh session), folded into the attention kernel
//!   (`decode_attention_qk_g<G>`, `kernels/decode_step_attention.cuh`): one launch a layer fewer,
//!   and the attention copies its earlier keys before it waits for the product; or `separate`,
//!   `layer_ops.cu`'s kernel between the q/k/v product and the attention.
//! - [`MoeDown`] (`QWEN3_MPI_MOE_DECODE_DOWN`): how a sparse layer's down product spreads over a
//!   block: `experts` (the default since the eleventh session, `moe_down_experts`: a block takes
//!   two rows, its warps the experts, so every warp of the grid streams weights) or `rows`
//!   (`moe_down_residual`: a warp takes two output rows and every chosen expert of them).

pub const QK_ENV: &str = "QWEN3_MPI_DECODE_QK";
pub const MOE_DOWN_ENV: &str = "QWEN3_MPI_MOE_DECODE_DOWN";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkPlacement {
    Separate,
    Fused,
}

/// `value` of `variable` as one of `options` (its name, the choice); unset or empty: the first;
/// else an error naming the variable.
fn one_of<T: Copy>(variable: &str, value: Option<&str>, options: &[(&str, T)]) -> Result<T, String> {
    let wanted = value.filter(|v| !v.is_empty()).unwrap_or(options[0].0);
    match options.iter().find(|(name, _)| *name == wanted) {
        Some(&(_, choice)) => Ok(choice),
        None => {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            Err(format!("{variable}={wanted}: expected {}", names.join(" or ")))
        }
    }
}

impl QkPlacement {
    /// From the variable's value (unset: `None`); a bad value is an error naming the variable.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        one_of(
            QK_ENV,
            value,
            &[("fused", Self::Fused), ("separate", Self::Separate)],
        )
    }

    /// The process's choice.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(QK_ENV).ok().as_deref())
    }

    /// The attention kernel for `group` query heads a KV head and dtype `suffix`.
    pub fn attention_kernel(self, group: usize, suffix: &str) -> String {
        match self {
            Self::Separate => format!("decode_attention_g{group}_{suffix}"),
            Self::Fused => format!("decode_attention_qk_g{group}_{suffix}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeDown {
    Rows,
    Experts,
}

impl MoeDown {
    /// From the variable's value (unset: `None`); a bad value is an error naming the variable.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        one_of(
            MOE_DOWN_ENV,
            value,
            &[("experts", Self::Experts), ("rows", Self::Rows)],
        )
    }

    /// The process's choice.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(MOE_DOWN_ENV).ok().as_deref())
    }

    /// The kernel's name without its dtype suffix.
    pub fn kernel(self) -> &'static str {
        match self {
            Self::Rows => "moe_down_residual",
            Self::Experts => "moe_down_experts",
        }
    }

    /// Blocks of the down product over `hidden` output rows: `rows` gives a warp a pair of rows
    /// (`warps` a block), `experts` a block; at most `resident`.
    pub fn blocks(self, hidden: usize, warps: usize, resident: usize) -> usize {
        let pairs = hidden.div_ceil(2);
        match self {
            Self::Rows => pairs.div_ceil(warps),
            Self::Experts => pairs,
        }
        .min(resident)
        .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_by_default_separate_on_request_else_an_error_naming_the_variable() {
        assert_eq!(QkPlacement::parse(None), Ok(QkPlacement::Fused));
        assert_eq!(QkPlacement::parse(Some("")), Ok(QkPlacement::Fused));
        assert_eq!(QkPlacement::parse(Some("separate")), Ok(QkPlacement::Separate));
        assert_eq!(QkPlacement::parse(Some("fused")), Ok(QkPlacement::Fused));
        let err = QkPlacement::parse(Some("yes")).unwrap_err();
        assert!(err.starts_with(QK_ENV), "{err}");
    }

    #[test]
    fn each_placement_names_a_kernel_the_kernel_file_builds_for_every_grouping() {
        let source = include_str!("kernels/decode_ops.cu");
        for placement in [QkPlacement::Separate, QkPlacement::Fused] {
            let name = placement.attention_kernel(4, "bf16");
            let (stem, _) = name.split_once("_g").unwrap();
            let macro_name = match placement {
                QkPlacement::Separate => "DECODE_ATTENTION(T, SUFFIX, ",
                QkPlacement::Fused => "DECODE_ATTENTION_QK(T, SUFFIX, ",
            };
            assert!(source.contains(&format!("{stem}_g##G##_##SUFFIX")), "{stem}");
            for group in 1..=8 {
                assert!(
                    source.contains(&format!("{macro_name}{group})")),
                    "{macro_name}{group}"
                );
            }
        }
    }

    #[test]
    fn moe_down_experts_by_default_rows_on_request_and_their_grids() {
        assert_eq!(MoeDown::parse(None), Ok(MoeDown::Experts));
        assert_eq!(MoeDown::parse(Some("rows")), Ok(MoeDown::Rows));
        assert_eq!(MoeDown::parse(Some("experts")), Ok(MoeDown::Experts));
        assert!(MoeDown::parse(Some("row")).unwrap_err().starts_with(MOE_DOWN_ENV));
        // Qwen3-30B-A3B: 2,048 rows, 8 warps a block, 264 blocks resident
        assert_eq!(MoeDown::Rows.blocks(2048, 8, 264), 128);
        assert_eq!(MoeDown::Experts.blocks(2048, 8, 264), 264);
        assert_eq!(MoeDown::Experts.blocks(8, 8, 264), 4);
        let source = include_str!("kernels/moe_ops.cu");
        for down in [MoeDown::Rows, MoeDown::Experts] {
            assert!(
                source.contains(&format!("{}_##SUFFIX(", down.kernel())),
                "{down:?}"
            );
        }
    }
}
