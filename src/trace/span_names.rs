//! What each span is called, with its layer, chunk and peer: the Perfetto export and the NVTX
//! ranges that Nsight Systems shows name a span alike.

use super::spans::{SpanAt, SpanKind};

/// The kind's short name (Perfetto's category).
pub fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Embed => "embed",
        SpanKind::LayerCompute => "layer",
        SpanKind::KvSync => "kv-sync",
        SpanKind::Send => "send",
        SpanKind::Recv => "recv",
        SpanKind::Wait => "wait",
        SpanKind::LmHead => "lm-head",
        SpanKind::DecodeStep => "decode",
        SpanKind::WeightLoad => "weight-load",
        SpanKind::Gemm => "gemm",
        SpanKind::Attention => "attention",
        SpanKind::Elementwise => "elementwise",
        SpanKind::Moe => "moe",
        SpanKind::DecodeSend => "decode-send",
        SpanKind::DecodeRecv => "decode-recv",
        SpanKind::DecodeWait => "decode-wait",
        SpanKind::KernelLoad => "kernel-load",
        SpanKind::HiddenCopy => "hidden-copy",
    }
}

/// What a span of `kind` did, with its layer, chunk and peer where they apply.
pub fn span_name(kind: SpanKind, at: &SpanAt) -> String {
    let of = |what: &str| match (at.layer, at.chunk) {
        (l, c) if l >= 0 && c >= 0 => format!("{what} layer {l} chunk {c}"),
        (_, c) if c >= 0 => format!("{what} chunk {c}"),
        _ if at.step >= 0 => format!("{what} step {}", at.step),
        _ => what.to_owned(),
    };
    match kind {
        SpanKind::Send => format!("send chunk {} to rank {}", at.chunk, at.peer),
        SpanKind::Recv => format!("recv chunk {} from rank {}", at.chunk, at.peer),
        SpanKind::HiddenCopy => format!("copy chunk {} for rank {}", at.chunk, at.peer),
        SpanKind::Wait if at.peer >= 0 => format!("wait for the first token from rank {}", at.peer),
        SpanKind::Wait => "wait for the KV sync to finish".into(),
        SpanKind::LayerCompute => of("layer").replacen("layer layer", "layer", 1),
        SpanKind::DecodeSend => format!("send decode step {} to rank {}", at.step, at.peer),
        SpanKind::DecodeRecv => format!("recv decode step {} from rank {}", at.step, at.peer),
        SpanKind::DecodeWait => format!("wait for decode step {}'s token from rank {}", at.step, at.peer),
        kind => of(kind_name(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(layer: i32, chunk: i32, peer: i32) -> SpanAt {
        SpanAt {
            layer,
            chunk,
            step: 3,
            peer,
            bytes: 0,
        }
    }

    #[test]
    fn span_names_carry_layer_chunk_and_peer() {
        assert_eq!(
            span_name(SpanKind::LayerCompute, &at(4, 2, -1)),
            "layer 4 chunk 2"
        );
        assert_eq!(
            span_name(SpanKind::KvSync, &at(4, 2, -1)),
            "kv-sync layer 4 chunk 2"
        );
        assert_eq!(span_name(SpanKind::KvSync, &at(-1, -1, -1)), "kv-sync step 3");
        assert_eq!(
            span_name(SpanKind::DecodeRecv, &at(-1, -1, 1)),
            "recv decode step 3 from rank 1"
        );
        assert_eq!(span_name(SpanKind::Send, &at(-1, 2, 1)), "send chunk 2 to rank 1");
        assert_eq!(
            span_name(SpanKind::Recv, &at(-1, 2, 0)),
            "recv chunk 2 from rank 0"
        );
        assert_eq!(
            span_name(SpanKind::Wait, &at(-1, -1, 2)),
            "wait for the first token from rank 2"
        );
    }
}
