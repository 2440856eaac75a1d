//! One safetensors file of a checkpoint: the header read with plain reads and every tensor's
//! byte range checked against the file's length before the file is mapped (a truncated file is
//! an error naming the file and the first tensor it cuts), then the read-only mapping, known to
//! the SIGBUS handler ([`super::bus_error`]) for as long as it lives.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorView};

use super::bus_error::{self, Registration};

/// Longest header read (the limit of the safetensors format itself).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The little-endian u64 header length every safetensors file starts with.
const LENGTH_BYTES: u64 = 8;

pub struct SafetensorsFile {
    path: PathBuf,
    metadata: Metadata,
    /// Where the tensors' data begins: after the length and the header.
    data_start: usize,
    /// Dropped before `mmap` (fields drop in order): the handler forgets the range first.
    _registration: Registration,
    mmap: Mmap,
}

impl SafetensorsFile {
    /// Reads and checks the header, then maps the file.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let invalid = |why: String| anyhow!("{shown}: not a valid safetensors file ({why})");
        let mut file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("{shown}: cannot stat"))?
            .len();
        let mut length = [0u8; LENGTH_BYTES as usize];
        file.read_exact(&mut length)
            .map_err(|_| invalid(format!("{file_len} bytes, too short for a header")))?;
        let header_len = u64::from_le_bytes(length);
        if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(LENGTH_BYTES) {
            return Err(invalid(format!(
                "its header claims {header_len} bytes, but the file holds {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| invalid(format!("cannot read the header: {e}")))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| invalid(format!("header: {e}")))?;
        let data_start = LENGTH_BYTES + header_len;
        check_ranges(&metadata, file_len.saturating_sub(data_start)).map_err(invalid)?;
        // SAFETY: mapped read-only. The file shrinking on disk while mapped makes a read of the
        // lost pages raise SIGBUS, which the registration below turns into a line naming it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| anyhow!("{shown}: cannot map ({e})"))?;
        if mmap.len() as u64 != file_len {
            bail!(
                "{shown}: changed size while being opened ({file_len}, then {} bytes)",
                mmap.len()
            );
        }
        let registration = bus_error::register(mmap.as_ptr(), mmap.len(), path);
        Ok(Self {
            path: path.to_owned(),
            metadata,
            data_start: data_start as usize,
            _registration: registration,
            mmap,
        })
    }

    /// Tensor `name`'s view into the mapping, if the file holds it.
    pub fn view(&self, name: &str) -> Option<Result<TensorView<'_>>> {
        let info = self.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        // within the mapping: checked against the file's length at open
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        Some(
            TensorView::new(info.dtype, info.shape.clone(), bytes)
                .map_err(|e| anyhow!("{}: tensor {name}: {e}", self.path.display())),
        )
    }
}

/// Every tensor's bytes inside the `data_len` bytes after the header, which they cover exactly
/// (the header's own checks, done as it parsed, make the ranges contiguous and sized by shape
/// and dtype).
fn check_ranges(metadata: &Metadata, data_len: u64) -> std::result::Result<(), String> {
    let mut covered = 0u64;
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else {
            continue;
        };
        let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        if end > data_len {
            return Err(format!(
                "tensor {name} lies at data bytes {start}..{end}, but the file holds {data_len} bytes of \
                 data: it is truncated"
            ));
        }
        covered = covered.max(end);
    }
    if covered < data_len {
        return Err(format!(
            "{} bytes after the last tensor's data",
            data_len - covered
        ));
    }
    Ok(())
}
