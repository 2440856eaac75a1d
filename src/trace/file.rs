//! One HDF5 trace file, written under a temporary name of its own (created exclusively, so two
//! jobs given the same path never write into one file) and renamed over the path when
//! complete, so a reader never sees a half-written file and a file never mixes two jobs. The
//! path is checked first: never a directory, never an input of the job (a file inside the model
//! directory), never an existing file that is not a qwen3-mpi trace.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdf5::types::VarLenUnicode;

/// Version of the file layout (attributes, groups, datasets) that readers rely on
/// (docs/trace-schema.md). 2: a `rank` column in the events, list attributes as arrays.
pub const SCHEMA_VERSION: u32 = 2;

/// The versions this build reads.
pub const READABLE_SCHEMA_VERSIONS: [u32; 2] = [1, 2];

pub struct TraceFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<hdf5::File>,
}

impl TraceFile {
    /// Creates `<path>.<pid>-<n>.partial` now (so an unwritable path fails before the run, not
    /// after), after checking `path` (see the module's documentation); `inputs` is the model
    /// directory, if the job reads one.
    pub fn create(path: &Path, inputs: Option<&Path>) -> Result<Self> {
        check_path(path, inputs)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| {
                format!(
                    "--trace {}: cannot create directory {}",
                    path.display(),
                    parent.display()
                )
            })?;
        }
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{}-{n}.partial", std::process::id()));
        let tmp_path = PathBuf::from(tmp_name);
        let file = hdf5::File::create_excl(&tmp_path).map_err(|e| {
            anyhow::anyhow!(
                "--trace {}: cannot create file ({})",
                path.display(),
                one_line(&e.to_string())
            )
        })?;
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
        let file = self.file()?;
        if file.attr(name).is_ok() {
            file.delete_attr(name)?;
        }
        file.new_attr::<u64>().create(name)?.write_scalar(&value)?;
        Ok(())
    }

    pub fn attr_f64(&self, name: &str, value: f64) -> Result<()> {
        let file = self.file()?;
        if file.attr(name).is_ok() {
            file.delete_attr(name)?;
        }
        file.new_attr::<f64>().create(name)?.write_scalar(&value)?;
        Ok(())
    }

    /// A 1-D array attribute of integers.
    pub fn attr_u64_array(&self, name: &str, values: &[u64]) -> Result<()> {
        let file = self.file()?;
        if file.attr(name).is_ok() {
            file.delete_attr(name)?;
        }
        file.new_attr_builder()
            .with_data(values)
            .create(name)
            .with_context(|| format!("trace attribute {name}"))?;
        Ok(())
    }

    /// A 1-D array attribute of strings.
    pub fn attr_str_array(&self, name: &str, values: &[String]) -> Result<()> {
        let file = self.file()?;
        if file.attr(name).is_ok() {
            file.delete_attr(name)?;
        }
        let values = values
            .iter()
            .map(|v| v.replace('\0', "").parse::<VarLenUnicode>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("trace attribute {name}: {e:?}"))?;
        file.new_attr_builder()
            .with_data(&values)
            .create(name)
            .with_context(|| format!("trace attribute {name}"))?;
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

/// The checks of the module's documentation, each error one line naming `--trace`.
fn check_path(path: &Path, inputs: Option<&Path>) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        anyhow::bail!("--trace {shown}: is a directory; give a file name (for example {shown}/job.h5)");
    }
    if let Some(dir) = inputs {
        // compare real paths: the trace's folder may not exist yet, the model's does
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let (Ok(parent), Ok(dir)) = (parent.canonicalize(), dir.canonicalize()) {
            if parent.starts_with(&dir) {
                anyhow::bail!(
                    "--trace {shown}: inside the model directory {}; refusing to write among the job's inputs",
                    dir.display()
                );
            }
        }
    }
    if path.exists() && !is_our_trace(path) {
        anyhow::bail!("--trace {shown}: exists and is not a qwen3-mpi trace; refusing to overwrite it");
    }
    Ok(())
}

/// Whether `path` is an HDF5 file this program wrote (it has our `schema_version` and `status`).
fn is_our_trace(path: &Path) -> bool {
    hdf5::File::open(path)
        .map(|f| f.attr("schema_version").is_ok() && f.attr("status").is_ok())
        .unwrap_or(false)
}

/// HDF5's messages carry newlines (its error stack): one line for ours.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Drop for TraceFile {
    /// A trace that was never finished leaves nothing behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
