//! Where weights come from: a Hugging Face checkpoint directory (memory-mapped safetensors,
//! single file or sharded) or the deterministic synthetic generator.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};

use safetensors::tensor::TensorView;

use super::safetensors_file::SafetensorsFile;
use super::synthetic;
use super::weight_names::TensorSpec;

/// A source of checkpoint tensors by name. Loading checks the shape and dtype.
pub trait WeightSource: Send + Sync {
    /// Loads one tensor, converted to `dtype`, on `device`.
    fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor>;

    /// Whether the source has a tensor named `name` (where a checkpoint may spell a part two
    /// ways, e.g. MoE experts one tensor each or fused).
    fn contains(&self, name: &str) -> Result<bool>;

    /// Calls `upload` with the tensor's bytes in host memory (row-major, in the dtype given)
    /// after the same checks as [`Self::load`], for a caller that moves them to the device its
    /// own way; `None` where the source has no such bytes (then `load` it).
    fn with_host_bytes(&self, spec: &TensorSpec, upload: &mut HostUpload<'_>) -> Result<Option<Tensor>> {
        let _ = (spec, upload);
        Ok(None)
    }
}

/// What [`WeightSource::with_host_bytes`] hands a tensor's bytes to: (bytes, their dtype) → the
/// tensor on the device.
pub type HostUpload<'a> = dyn FnMut(&[u8], DType) -> Result<Tensor> + 'a;

/// A source that adds up the bytes of every tensor loaded through it: how a model measures the
/// weights it holds, tensor by tensor as they load.
pub struct CountingSource<'a> {
    inner: &'a dyn WeightSource,
    bytes: AtomicU64,
}

impl<'a> CountingSource<'a> {
    pub fn new(inner: &'a dyn WeightSource) -> Self {
        Self {
            inner,
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes of the tensors loaded so far (in the dtype they were loaded as).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl WeightSource for CountingSource<'_> {
    fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = self.inner.load(spec, dtype, device)?;
        let bytes = tensor.elem_count() * tensor.dtype().size_in_bytes();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(tensor)
    }

    fn contains(&self, name: &str) -> Result<bool> {
        self.inner.contains(name)
    }
}

/// Weights generated in memory from a seed (the built-in `tiny` model, test checkpoints).
pub struct SyntheticWeights {
    pub seed: u64,
}

impl WeightSource for SyntheticWeights {
    fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor> {
        let values = synthetic::tensor_values(self.seed, &spec.name, &spec.shape);
        Ok(Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?)
    }

    fn with_host_bytes(&self, spec: &TensorSpec, upload: &mut HostUpload<'_>) -> Result<Option<Tensor>> {
        let values = synthetic::tensor_values(self.seed, &spec.name, &spec.shape);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        upload(&bytes, DType::F32).map(Some)
    }

    /// Any name can be generated: the synthetic checkpoint is in the first spelling asked for.
    fn contains(&self, _name: &str) -> Result<bool> {
        Ok(true)
    }
}

/// Called right after a checkpoint file is mapped, before anything is read from it, with its
/// path and how many files this checkpoint had mapped before it (the fault-injection tests
/// truncate the file there).
pub type AfterMap = Arc<dyn Fn(&Path, usize) -> Result<()> + Send + Sync>;

/// A checkpoint directory: `model.safetensors`, or the shards named in
/// `model.safetensors.index.json`. Shards are memory-mapped when first needed, so a stage maps
/// only the files that hold its tensors.
pub struct Checkpoint {
    dir: PathBuf,
    /// tensor name → file name (None: single-file checkpoint).
    weight_map: Option<HashMap<String, String>>,
    open_files: Mutex<HashMap<String, Arc<SafetensorsFile>>>,
    after_map: Option<AfterMap>,
}

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, None)
    }

    /// As [`Self::open`], with `after_map` called after each file is mapped.
    pub fn open_with(dir: &Path, after_map: Option<AfterMap>) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let weight_map = if index_path.exists() {
            Some(read_index(&index_path)?)
        } else if dir.join(SINGLE_FILE).exists() {
            None
        } else {
            bail!("{}: no {SINGLE_FILE} or {INDEX_FILE}", dir.display());
        };
        Ok(Self {
            dir: dir.to_owned(),
            weight_map,
            open_files: Mutex::new(HashMap::new()),
            after_map,
        })
    }

    /// The file that holds tensor `name`.
    fn file_of(&self, name: &str) -> Result<String> {
        match &self.weight_map {
            None => Ok(SINGLE_FILE.to_owned()),
            Some(map) => map.get(name).cloned().with_context(|| {
                format!(
                    "{}: tensor {name} is not in the weight map",
                    self.dir.join(INDEX_FILE).display()
                )
            }),
        }
    }

    fn mapped(&self, file: &str) -> Result<Arc<SafetensorsFile>> {
        let mut open = self
            .open_files
            .lock()
            .map_err(|_| anyhow::anyhow!("weight file lock poisoned"))?;
        if let Some(st) = open.get(file) {
            return Ok(st.clone());
        }
        let path = self.dir.join(file);
        if !path.exists() {
            bail!("{}: file named in {INDEX_FILE} does not exist", path.display());
        }
        let st = Arc::new(SafetensorsFile::open(&path)?);
        if let Some(after_map) = &self.after_map {
            after_map(&path, open.len())?;
        }
        open.insert(file.to_owned(), st.clone());
        Ok(st)
    }

    /// Calls `read` with tensor `spec` of its file, once its dtype and shape are checked.
    fn with_view<R>(
        &self,
        spec: &TensorSpec,
        read: impl FnOnce(TensorView<'_>, &Path) -> Result<R>,
    ) -> Result<R> {
        let file = self.file_of(&spec.name)?;
        let st = self.mapped(&file)?;
        let path = self.dir.join(&file);
        let view = st
            .view(&spec.name)
            .with_context(|| format!("{}: tensor {} is missing", path.display(), spec.name))??;
        let found_dtype = view.dtype();
        use safetensors::Dtype as D;
        if !matches!(found_dtype, D::F32 | D::BF16 | D::F16) {
            bail!(
                "{}: tensor {} has dtype {found_dtype:?}, expected F32, BF16 or F16",
                path.display(),
                spec.name
            );
        }
        if view.shape() != spec.shape.as_slice() {
            bail!(
                "{}: tensor {} has shape {:?}, expected {:?}",
                path.display(),
                spec.name,
                view.shape(),
                spec.shape
            );
        }
        read(view, &path)
    }
}

impl WeightSource for Checkpoint {
    fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor> {
        self.with_view(spec, |view, path| {
            // the mapped bytes are read here, outside every lock (a SIGBUS parks this thread:
            // see bus_error)
            let tensor = view
                .load(device)
                .with_context(|| format!("{}: cannot load tensor {}", path.display(), spec.name))?;
            Ok(tensor.to_dtype(dtype)?)
        })
    }

    fn with_host_bytes(&self, spec: &TensorSpec, upload: &mut HostUpload<'_>) -> Result<Option<Tensor>> {
        self.with_view(spec, |view, _| {
            let dtype = match view.dtype() {
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F16 => DType::F16,
                _ => DType::F32, // the only other dtype `with_view` lets through
            };
            // read outside every lock, as in `load`
            upload(view.data(), dtype).map(Some)
        })
    }

    fn contains(&self, name: &str) -> Result<bool> {
        match &self.weight_map {
            Some(map) => Ok(map.contains_key(name)),
            None => Ok(self.mapped(SINGLE_FILE)?.view(name).is_some()),
        }
    }
}

fn read_index(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: missing object `weight_map`", path.display()))?;
    map.iter()
        .map(|(name, file)| {
            let file = file
                .as_str()
                .with_context(|| format!("{}: weight_map entry {name} is not a file name", path.display()))?;
            if file.contains('/') || file.contains("..") {
                bail!(
                    "{}: weight_map entry {name} points outside the model directory",
                    path.display()
                );
            }
            Ok((name.clone(), file.to_owned()))
        })
        .collect()
}
