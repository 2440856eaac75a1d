//! Figures as people read them: one unit per kind (milliseconds, binary sizes, FLOP/s), counted
//! nouns.

/// "1 rank", "3 ranks".
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// Seconds as milliseconds, to three significant figures or so.
pub fn ms(seconds: f64) -> String {
    let ms = seconds * 1e3;
    match ms.abs() {
        m if m >= 100.0 => format!("{ms:.0} ms"),
        m if m >= 10.0 => format!("{ms:.1} ms"),
        _ => format!("{ms:.2} ms"),
    }
}

/// Bytes in binary units: "512 B", "80.0 KiB", "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate of work: "665.0 TFLOP/s", "15.1 GFLOP/s".
pub fn flops(per_s: f64) -> String {
    match per_s {
        f if f >= 1e12 => format!("{:.1} TFLOP/s", f / 1e12),
        f => format!("{:.1} GFLOP/s", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_in_one_unit_each() {
        assert_eq!(bytes(81920), "80.0 KiB");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(ms(0.0343), "34.3 ms");
        assert_eq!(ms(0.000242), "0.24 ms");
        assert_eq!(ms(0.5161), "516 ms");
        assert_eq!(count(1, "rank"), "1 rank");
        assert_eq!(count(2, "chunk"), "2 chunks");
        assert_eq!(flops(665e12), "665.0 TFLOP/s");
        assert_eq!(flops(15.1e9), "15.1 GFLOP/s");
    }
}
