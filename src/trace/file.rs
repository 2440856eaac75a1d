//! One HDF5 trace file, written under a temporary name and renamed when complete, so a reader
//! never sees a half-written file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdf5::types::VarLenUnicode;

/// Version of the file layout (attributes, groups, datasets) that readers rely on.
pub const SCHEMA_VERSION: u32 = 1;

pub struct TraceFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<hdf5::File>,
}

impl TraceFile {
    /// Creates `<path>.partial` now (so an unwritable path fails before the run, not after).
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| {
                format!(
                    "--trace {}: cannot create directory {}",
                    path.display(),
                    parent.display()
                )
            })?;
        }
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".partial");
        let tmp_path = PathBuf::from(tmp_name);
        let file = hdf5::File::create(&tmp_path)
            .map_err(|e| anyhow::anyhow!("--trace {}: cannot create file ({e})", path.display()))?;
        let trace = Self {
            final_path: path.to_owned(),
            tmp_path,
            file: Some(file),
        };
        trace.attr_u64("schema_version", SCHEMA_VERSION as u64)?;
        trace.attr_str("status", "running")?;
        Ok(trace)
    }

    fn file(&self) -> Result<&hdf5::File> {
        self.file.as_ref().context("trace file already closed")
    }

    pub fn attr_str(&self, name: &str, value: &str) -> Result<()> {
        let file = self.file()?;
        if file.attr(name).is_ok() {
            file.delete_attr(name)?;
        }
        // HDF5 strings end at NUL (MPI's version string carries trailing ones)
        let value: VarLenUnicode = value
            .replace('\0', "")
            .parse()
            .map_err(|e| anyhow::anyhow!("trace attribute {name}: {e:?}"))?;
        file.new_attr::<VarLenUnicode>()
            .create(name)?
            .write_scalar(&value)?;
        Ok(())
    }

    pub fn attr_u64(&self, name: &str, value: u64) -> Result<()> {
        self.file()?
            .new_attr::<u64>()
            .create(name)?
            .write_scalar(&value)?;
        Ok(())
    }

    pub fn attr_f64(&self, name: &str, value: f64) -> Result<()> {
        self.file()?
            .new_attr::<f64>()
            .create(name)?
            .write_scalar(&value)?;
        Ok(())
    }

    /// A float attribute on group `group` (created if needed).
    pub fn group_attr_f64(&self, group: &str, name: &str, value: f64) -> Result<()> {
        let file = self.file()?;
        let group = file.group(group).or_else(|_| file.create_group(group))?;
        group.new_attr::<f64>().create(name)?.write_scalar(&value)?;
        Ok(())
    }

    /// A 1-D dataset at `path` ("group/name"); the group is created if needed.
    pub fn dataset<T: hdf5::H5Type>(&self, path: &str, data: &[T]) -> Result<()> {
        let file = self.file()?;
        let (group, name) = match path.rsplit_once('/') {
            Some((group, name)) => (Some(group), name),
            None => (None, path),
        };
        let builder = match group {
            Some(g) => file
                .group(g)
                .or_else(|_| file.create_group(g))?
                .new_dataset_builder(),
            None => file.new_dataset_builder(),
        };
        builder
            .with_data(data)
            .create(name)
            .with_context(|| format!("trace dataset {path}"))?;
        Ok(())
    }

    /// Marks the file complete with `status` ("ok" or "failed: …"), closes and renames it.
    pub fn finish(mut self, status: &str) -> Result<PathBuf> {
        self.attr_str("status", status)?;
        if let Some(file) = self.file.take() {
            file.close()?;
        }
        std::fs::rename(&self.tmp_path, &self.final_path).with_context(|| {
            format!(
                "--trace {}: cannot rename the finished file",
                self.final_path.display()
            )
        })?;
        Ok(self.final_path.clone())
    }
}

impl Drop for TraceFile {
    /// A trace that was never finished leaves nothing behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
