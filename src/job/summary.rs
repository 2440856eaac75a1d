//! The summary rank 0 prints after the generated text: times in milliseconds, sizes in binary
//! units, the pipeline's overlap beside its ideal.

use std::fmt::Write as _;

use super::report::JobReport;
use crate::schedule::{Chunking, DecodeMode};
use crate::units::{bytes, count, ms};

impl JobReport {
    /// The chunk cost model's prediction beside the TTFT, and why a prefill on a GPU can take
    /// far longer: its first run pays one-time costs (kernels loaded, library plans made) that
    /// the model, made of warm runs, leaves out, and ranks that share a GPU take turns on it,
    /// where the model gives each rank a GPU of its own.
    fn prediction_note(&self) -> String {
        let predicted = ms(self.predicted_ttft_s);
        let first_on_gpu = self.device != "cpu" && self.ttft_runs_s.len() <= 1;
        let note = match first_on_gpu && self.ttft_s > 2.0 * self.predicted_ttft_s {
            true => format!(
                "the chunk cost model predicted {predicted} for a warm run; this first one includes one-time start-up costs, --prefill-runs 2 times a warm one"
            ),
            false => format!("the chunk cost model predicted {predicted}"),
        };
        match self.ranks_per_gpu > 1 {
            true => format!(
                "{note}; the model gives each rank a GPU of its own, and {} share one here",
                self.ranks_per_gpu
            ),
            false => note,
        }
    }

    /// The human-readable summary (after the generated text).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let split: Vec<String> = self.layer_split.iter().map(|c| c.to_string()).collect();
        let model = match self.random_weights {
            true => format!("{} with random weights", self.model),
            false => self.model.clone(),
        };
        let sync = match self.decode_mode {
            DecodeMode::Redundant => format!("sync {} over {}", self.sync, self.transport),
            DecodeMode::Pipeline => "no KV sync".to_string(),
        };
        let sync = match self.ranks > 1 {
            true => format!("{sync}, hidden states over {}", self.hidden_transport),
            false => sync,
        };
        let _ = writeln!(
            out,
            "--- {} (layers {}), {sync}, {} of {} tokens, {} {}, model {model}",
            count(self.ranks, "rank"),
            split.join(","),
            count(self.chunks, "chunk"),
            self.chunk_length_range(),
            self.device,
            self.dtype,
        );
        let _ = writeln!(
            out,
            "prompt {}, generated {} | TTFT {} ({}) | prefill {:.1} tokens/s | decode {:.1} tokens/s ({} per token, median)",
            count(self.prompt_tokens, "token"),
            self.new_tokens,
            ms(self.ttft_s),
            self.prediction_note(),
            self.prefill_tokens_per_s,
            self.decode_tokens_per_s,
            ms(self.decode_ms_per_token_median / 1e3),
        );
        let _ = writeln!(out, "{}", self.pipeline_line());
        let _ = writeln!(out, "{}", self.decode_line());
        if self.ttft_runs_s.len() > 1 {
            let runs: Vec<String> = self.ttft_runs_s.iter().map(|&s| ms(s)).collect();
            let _ = writeln!(
                out,
                "TTFT of each of the {} prefill runs: {} (the figures above are the last run's)",
                self.ttft_runs_s.len(),
                runs.join(", ")
            );
        }
        for r in &self.per_rank {
            let _ = match self.decode_mode {
                DecodeMode::Redundant => writeln!(
                    out,
                    "rank {}: compute {}, waited for input {}, exposed KV sync {} | KV sent {}, received {}",
                    r.rank,
                    ms(r.stage.compute_s),
                    ms(r.stage.recv_wait_s),
                    ms(r.exposed_sync_s),
                    bytes(r.kv_bytes_sent),
                    bytes(r.kv_bytes_received),
                ),
                // no KV sync ran: each rank keeps only its own layers' cache
                DecodeMode::Pipeline => writeln!(
                    out,
                    "rank {}: compute {}, waited for input {} | no KV sync",
                    r.rank,
                    ms(r.stage.compute_s),
                    ms(r.stage.recv_wait_s),
                ),
            };
            let d = &r.decode;
            let _ = writeln!(
                out,
                "rank {} decode: compute {}, received {}, sent {}, waited for the token {} | holds weights {}, KV cache {}",
                r.rank,
                ms(d.compute_s),
                ms(d.recv_s),
                ms(d.send_s),
                ms(d.wait_s),
                bytes(r.weight_bytes),
                bytes(r.kv_cache_bytes),
            );
        }
        out
    }

    /// How the tokens after the first were made.
    fn decode_line(&self) -> String {
        match self.decode_mode {
            DecodeMode::Redundant => format!(
                "decode redundant: every rank ran every layer for each token, with no communication ({})",
                self.decode_mode_reason
            ),
            DecodeMode::Pipeline => format!(
                "decode pipeline: each token's hidden state went rank to rank through each rank's own layers, the \
                 last rank's token broadcast; KV sync skipped, each rank keeps only its own layers' cache ({})",
                self.decode_mode_reason
            ),
        }
    }

    /// The pipeline's overlap against its ideal, R·C/(C+R−1).
    fn pipeline_line(&self) -> String {
        if self.ranks < 2 {
            return format!(
                "pipeline: one rank, so none ({} through all {} layers)",
                count(self.chunks, "chunk"),
                self.layer_split.iter().sum::<usize>()
            );
        }
        format!(
            "pipeline: {} through {} stages overlapped {:.2}x (the ranks' compute summed over TTFT) \
             against the ideal R·C/(C+R−1) = {:.2}x: {:.0} % efficiency{}",
            count(self.chunks, "chunk"),
            self.ranks,
            self.pipeline_overlap,
            self.pipeline_ideal,
            self.pipeline_efficiency * 100.0,
            match self.ranks_per_gpu > 1 {
                true => format!(
                    " ({} ranks take turns on one GPU here, so their compute cannot overlap)",
                    self.ranks_per_gpu
                ),
                false => String::new(),
            }
        )
    }

    /// "N" for equal chunks, "first..last" for balanced ones.
    fn chunk_length_range(&self) -> String {
        match (self.chunk_lengths.first(), self.chunk_lengths.last()) {
            (Some(first), Some(last)) if self.chunking == Chunking::Balanced && first != last => {
                format!("{first}..{last}")
            }
            _ => self.chunk_size.to_string(),
        }
    }
}
