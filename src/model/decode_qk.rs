//! Where the decode step's q/k norm, RoPE and cache write run (`QWEN3_MPI_DECODE_QK`):
//! `separate` (the default), `layer_ops.cu`'s kernel between the q/k/v product and the attention;
//! or `fused`, folded into the attention kernel (`decode_attention_qk_g<G>`,
//! `kernels/decode_step_attention.cuh`): one launch a layer fewer, and the attention copies its
//! earlier keys before it waits for the product. The same roundings in both, so the same outputs
//! bit for bit. Pure, so that it is tested without a GPU.

pub const QK_ENV: &str = "QWEN3_MPI_DECODE_QK";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkPlacement {
    Separate,
    Fused,
}

impl QkPlacement {
    /// From the variable's value (unset: `None`); a bad value is an error naming the variable.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.unwrap_or("") {
            "" | "separate" => Ok(Self::Separate),
            "fused" => Ok(Self::Fused),
            other => Err(format!("{QK_ENV}={other}: expected separate or fused")),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separate_by_default_fused_on_request_else_an_error_naming_the_variable() {
        assert_eq!(QkPlacement::parse(None), Ok(QkPlacement::Separate));
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
}
