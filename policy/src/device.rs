//! Which libtorch is loaded, which devices it sees, and how fast they multiply matrices.
//!
//! The version is read from the `version.py` that sits beside the *loaded* `libtorch_cpu.so`
//! (found through `/proc/self/maps`), not from build-time facts: on a GPU node the binary runs
//! against that node's PyTorch through `LD_LIBRARY_PATH`, and that is the one that matters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

/// The libtorch this process actually loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LibtorchInfo {
    /// Folder holding the loaded `libtorch_cpu.so`.
    pub lib_dir: Option<PathBuf>,
    /// PyTorch's `__version__` (e.g. `2.11.0+cu130`), when a `version.py` sits beside `lib/`.
    pub version: Option<String>,
    /// The CUDA version this libtorch was built for (`None` for CPU-only builds).
    pub built_for_cuda: Option<String>,
}

/// What libtorch reports about accelerators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AcceleratorReport {
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cudnn_available: bool,
    pub cpu_threads: i32,
}

impl AcceleratorReport {
    pub fn probe() -> Self {
        AcceleratorReport {
            cuda_available: tch::Cuda::is_available(),
            cuda_device_count: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cpu_threads: tch::get_num_threads(),
        }
    }
}

/// One timed square matrix product.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatmulTiming {
    pub device: String,
    pub dtype: String,
    pub n: i64,
    /// Median seconds of one `n x n` by `n x n` product.
    pub seconds: f64,
    /// `2 n^3 / seconds`, in TFLOP/s.
    pub tflops: f64,
}

/// Finds the loaded libtorch and reads its version.
pub fn libtorch_info() -> LibtorchInfo {
    // Touch libtorch so that it is certainly mapped before we look.
    let _ = tch::get_num_threads();
    let lib_dir = loaded_library_dir("libtorch_cpu.so");
    let version_py = lib_dir
        .as_deref()
        .and_then(Path::parent)
        .map(|torch| torch.join("version.py"))
        .and_then(|p| std::fs::read_to_string(p).ok());
    let field = |name: &str| version_py.as_deref().and_then(|text| python_string_assignment(text, name));
    LibtorchInfo { version: field("__version__"), built_for_cuda: field("cuda"), lib_dir }
}

fn loaded_library_dir(file_name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| p.file_name().is_some_and(|f| f == file_name))
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Value of a `name = 'value'` line in a Python file (`None` for `name = None` or no such line).
fn python_string_assignment(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (lhs, rhs) = line.split_once('=')?;
        // `cuda: Optional[str] = '13.0'` carries a type annotation.
        let lhs = lhs.split(':').next()?.trim();
        if lhs != name {
            return None;
        }
        let rhs = rhs.trim();
        let quoted = rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\''));
        let quoted = quoted.or_else(|| rhs.strip_prefix('"').and_then(|r| r.strip_suffix('"')));
        quoted.map(str::to_owned)
    })
}

/// Times `iters` products of two random `n x n` matrices of `kind` on `device` and returns the
/// median. Warms up first so that kernel selection and allocation stay out of the numbers.
pub fn matmul_throughput(device: Device, kind: Kind, n: i64, iters: usize) -> Result<MatmulTiming, tch::TchError> {
    let _guard = tch::no_grad_guard();
    let a = Tensor::f_randn([n, n], (kind, device))?;
    let b = Tensor::f_randn([n, n], (kind, device))?;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..3 {
        let _ = a.f_matmul(&b)?;
    }
    sync();
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        let c = a.f_matmul(&b)?;
        sync();
        times.push(start.elapsed().as_secs_f64());
        drop(c);
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let flops = 2.0 * (n as f64).powi(3);
    Ok(MatmulTiming {
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        n,
        seconds,
        tflops: flops / seconds / 1e12,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_torch_version_py() {
        let text = "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\nhip = None\n";
        assert_eq!(python_string_assignment(text, "__version__").as_deref(), Some("2.11.0+cu130"));
        assert_eq!(python_string_assignment(text, "cuda").as_deref(), Some("13.0"));
        assert_eq!(python_string_assignment(text, "hip"), None);
        assert_eq!(python_string_assignment(text, "git_version"), None);
    }

    #[test]
    fn finds_the_loaded_libtorch_and_its_version() {
        let info = libtorch_info();
        let dir = info.lib_dir.expect("libtorch_cpu.so is mapped in a test that links tch");
        assert!(dir.join("libtorch_cpu.so").exists());
        let version = info.version.expect("the pip wheel ships torch/version.py");
        assert!(version.starts_with("2.11.0"), "tch 0.24 needs libtorch 2.11.0, loaded {version}");
    }

    #[test]
    fn cpu_matmul_is_timed_and_finite() {
        let t = matmul_throughput(Device::Cpu, Kind::Float, 128, 3).unwrap();
        assert!(t.seconds > 0.0 && t.tflops.is_finite() && t.tflops > 0.0);
        assert_eq!(t.n, 128);
    }
}
