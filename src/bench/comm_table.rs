//! The rows `bench-comm` measures, as printed and as stored in its HDF5 file (`/comm`).

use std::fmt::Write as _;

use hdf5::types::FixedAscii;

/// One (transport, sync, size) measurement. Bandwidths follow nccl-tests: `algbw` is the bytes
/// every rank ends up with over the time, `busbw = algbw (n − 1) / n`.
#[derive(Debug, Clone, Copy, hdf5::H5Type, serde::Serialize)]
#[repr(C)]
pub struct CommRow {
    #[serde(serialize_with = "ascii")]
    pub transport: FixedAscii<32>,
    #[serde(serialize_with = "ascii")]
    pub sync: FixedAscii<16>,
    pub ranks: u32,
    pub bytes_per_rank: u64,
    pub iters: u32,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub algbw_gbs: f64,
    pub busbw_gbs: f64,
}

fn ascii<const N: usize, S: serde::Serializer>(value: &FixedAscii<N>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.as_str())
}

impl CommRow {
    /// A row from the per-iteration times (seconds, the slowest rank's each).
    pub fn from_times(
        transport: &str,
        sync: &str,
        ranks: usize,
        bytes_per_rank: usize,
        times: &[f64],
    ) -> Self {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median_s = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let algbw = (ranks * bytes_per_rank) as f64 / median_s / 1e9;
        Self {
            transport: FixedAscii::from_ascii(&transport.as_bytes()[..transport.len().min(32)])
                .unwrap_or_default(),
            sync: FixedAscii::from_ascii(&sync.as_bytes()[..sync.len().min(16)]).unwrap_or_default(),
            ranks: ranks as u32,
            bytes_per_rank: bytes_per_rank as u64,
            iters: times.len() as u32,
            median_s,
            min_s: sorted.first().copied().unwrap_or(f64::NAN),
            max_s: sorted.last().copied().unwrap_or(f64::NAN),
            algbw_gbs: algbw,
            busbw_gbs: algbw * (ranks as f64 - 1.0) / ranks as f64,
        }
    }
}

/// The table rank 0 prints.
pub fn format_rows(rows: &[CommRow]) -> String {
    let mut out = String::from(
        "transport                        sync       ranks   bytes/rank   median us      min us  busbw GB/s\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:>5} {:>12} {:>11.1} {:>11.1} {:>11.2}",
            r.transport.as_str(),
            r.sync.as_str(),
            r.ranks,
            r.bytes_per_rank,
            r.median_s * 1e6,
            r.min_s * 1e6,
            r.busbw_gbs
        );
    }
    out
}
