//! Checkpoints: safetensors files holding every parameter and batch-norm statistic by name,
//! optionally the Adam moments (for `--resume`), and the whole configuration as JSON in the
//! header metadata under the key `fewshot`, so `eval` and `predict` need nothing else.
//! Written atomically: temporary file in the same directory, fsync, rename, fsync directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::{Conv4Config, Layout};

/// Largest checkpoint we agree to read (a Conv-4 is a few MB; 84x84 with a wide head well under this).
const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file or truncated/corrupt ({detail})")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: a safetensors file, but not a fewshot checkpoint (no 'fewshot' metadata)")]
    NotFewshot { path: PathBuf },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// Everything about a run except the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// "protonet" or "siamese".
    pub method: String,
    /// Siamese loss ("contrastive" or "koch"), if any.
    pub loss: Option<String>,
    pub margin: f32,
    pub arch: Conv4Config,
    /// How pixels were scaled: fewshot always feeds [0, 1] with strokes/foreground as given
    /// by the loader (Omniglot: strokes = 1).
    pub normalization: String,
    /// The `--dataset` the model was trained on.
    pub dataset: String,
    /// Training episodes (or pair batches) completed.
    pub episode: u64,
    pub seed: u64,
    /// Training settings (way, shot, query, pairs, lr, ...), as given.
    pub train: serde_json::Value,
    /// Sampler RNG state, for exact resume.
    pub sampler: Option<serde_json::Value>,
    pub best_val_accuracy: Option<f64>,
    pub elapsed_seconds: f64,
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub params: Vec<f32>,
    pub stats: Vec<f32>,
    /// Adam first and second moments, when saved for resuming.
    pub optimizer: Option<(Vec<f32>, Vec<f32>)>,
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Serialize to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let layout = Layout::new(&self.meta.arch);
        if self.params.len() != layout.param_len || self.stats.len() != layout.stats_len {
            return Err("parameter buffers do not match the architecture".into());
        }
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for e in &layout.params {
            owned.push((
                e.name.clone(),
                e.shape.clone(),
                bytes_of(&self.params[e.offset..e.offset + e.len()]),
            ));
        }
        for e in &layout.stats {
            owned.push((
                e.name.clone(),
                e.shape.clone(),
                bytes_of(&self.stats[e.offset..e.offset + e.len()]),
            ));
        }
        if let Some((m, v)) = &self.optimizer {
            owned.push(("optimizer.adam_m".into(), vec![m.len()], bytes_of(m)));
            owned.push(("optimizer.adam_v".into(), vec![v.len()], bytes_of(v)));
        }
        let views = owned
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let meta = serde_json::to_string(&self.meta).map_err(|e| e.to_string())?;
        let info = HashMap::from([("fewshot".to_string(), meta)]);
        safetensors::serialize(views, Some(info)).map_err(|e| e.to_string())
    }

    /// Write atomically: a crash or kill at any moment leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes = self.to_bytes().map_err(|detail| CheckpointError::Invalid {
            path: path.to_path_buf(),
            detail,
        })?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::Invalid {
                path: path.to_path_buf(),
                detail: format!("{len} bytes is larger than any fewshot checkpoint (limit {MAX_CHECKPOINT_BYTES})"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let format = |detail: String| CheckpointError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let invalid = |detail: String| CheckpointError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        // Header first: safetensors checks the header length against the file and every tensor's
        // byte range against its dtype and shape before we touch any data.
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| format(format!("{e:?}")))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("fewshot"))
            .ok_or_else(|| CheckpointError::NotFewshot {
                path: path.to_path_buf(),
            })?;
        let meta: CheckpointMeta = serde_json::from_str(meta_json)
            .map_err(|e| invalid(format!("unreadable fewshot metadata: {e}")))?;
        if meta.format != FORMAT_VERSION {
            return Err(invalid(format!(
                "checkpoint format {} but this fewshot reads format {FORMAT_VERSION}",
                meta.format
            )));
        }
        // The metadata is untrusted: bound the architecture by what the file can hold before
        // validating it or computing its layout (huge widths or block counts would overflow).
        if !arch_fits(&meta.arch, bytes.len()) {
            return Err(invalid(format!(
                "bad architecture in metadata: {:?} needs more weights than this {}-byte file holds",
                meta.arch,
                bytes.len()
            )));
        }
        meta.arch
            .validate()
            .map_err(|e| invalid(format!("bad architecture in metadata: {e}")))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format(format!("{e:?}")))?;
        let layout = Layout::new(&meta.arch);
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, CheckpointError> {
            let t = tensors
                .tensor(name)
                .map_err(|_| invalid(format!("missing tensor '{name}'")))?;
            if t.dtype() != Dtype::F32 {
                return Err(invalid(format!(
                    "tensor '{name}' is {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape() != shape {
                return Err(invalid(format!(
                    "tensor '{name}' has shape {:?} but the architecture in the metadata needs {:?}",
                    t.shape(),
                    shape
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut params = vec![0.0; layout.param_len];
        for e in &layout.params {
            params[e.offset..e.offset + e.len()].copy_from_slice(&read(&e.name, &e.shape)?);
        }
        let mut stats = vec![0.0; layout.stats_len];
        for e in &layout.stats {
            stats[e.offset..e.offset + e.len()].copy_from_slice(&read(&e.name, &e.shape)?);
        }
        let optimizer = if tensors.names().contains(&"optimizer.adam_m") {
            Some((
                read("optimizer.adam_m", &[layout.param_len])?,
                read("optimizer.adam_v", &[layout.param_len])?,
            ))
        } else {
            None
        };
        if params.iter().chain(&stats).any(|v| !v.is_finite()) {
            return Err(invalid("contains NaN or infinite weights".into()));
        }
        if let Some((m, v)) = &optimizer {
            if m.iter().any(|x| !x.is_finite()) || v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(invalid(
                    "the optimizer state contains NaN, infinite or negative values".into(),
                ));
            }
        }
        Ok(Checkpoint {
            meta,
            params,
            stats,
            optimizer,
        })
    }
}

/// Whether every weight and statistic of `arch` fits in a file of `file_len` bytes (4 bytes
/// each), computed without overflow; false for a block count no image size allows.
fn arch_fits(arch: &Conv4Config, file_len: usize) -> bool {
    if arch.blocks >= usize::BITS as usize {
        return false;
    }
    let count = || -> Option<usize> {
        let (c, h, b) = (arch.in_channels, arch.hidden, arch.blocks);
        let per_block = |inputs: usize| {
            h.checked_mul(inputs)?
                .checked_mul(9)?
                .checked_add(h.checked_mul(5)?)
        };
        let mut n = if b == 0 { 0 } else { per_block(c)? };
        n = n.checked_add(per_block(h)?.checked_mul(b.saturating_sub(1))?)?;
        if arch.koch_head {
            let s = arch.image_size >> b;
            n = n
                .checked_add(h.checked_mul(s)?.checked_mul(s)?)?
                .checked_add(1)?;
        }
        Some(n)
    };
    count().is_some_and(|n| n <= file_len / 4)
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, fsync, rename,
/// fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
