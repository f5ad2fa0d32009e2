//! A c10d process group over the shim: the store, the backend and one call per collective.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use tch::Tensor;

use crate::rendezvous::{BackendKind, Launch};
use crate::{DistError, Result};

#[allow(improper_ctypes)]
extern "C" {
    fn dist_free_error(err: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    fn dist_init(
        host: *const c_char,
        port: u16,
        rank: c_int,
        size: c_int,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        gloo_host: *const c_char,
        gloo_interface: *const c_char,
        backend: c_int,
        device: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn dist_destroy(group: *mut c_void);
    fn dist_all_reduce(group: *mut c_void, tensor: *mut torch_sys::C_tensor, op: c_int, err: *mut *mut c_char) -> c_int;
    fn dist_reduce_scatter(group: *mut c_void, output: *mut torch_sys::C_tensor, input: *mut torch_sys::C_tensor, op: c_int, err: *mut *mut c_char) -> c_int;
    fn dist_all_gather(group: *mut c_void, output: *mut torch_sys::C_tensor, input: *mut torch_sys::C_tensor, err: *mut *mut c_char) -> c_int;
    fn dist_broadcast(group: *mut c_void, tensor: *mut torch_sys::C_tensor, root: c_int, err: *mut *mut c_char) -> c_int;
    fn dist_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn dist_store_add(group: *mut c_void, key: *const c_char, value: i64, result: *mut i64, err: *mut *mut c_char) -> c_int;
}

/// How a reduction combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Avg = 1,
    Min = 2,
    Max = 3,
}

/// Takes the shim's message, if any, and frees it.
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "failed without a message".into();
    }
    // SAFETY: the shim wrote a NUL-terminated string allocated with malloc; it is freed once, here.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { dist_free_error(err) };
    message
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// A joined process group: this rank's handle on the store and the backend.
pub struct ProcessGroup {
    raw: *mut c_void,
    pub rank: usize,
    pub world_size: usize,
    /// The ranks that share this node (`None` when the launcher does not say).
    local: std::ops::Range<usize>,
    pub backend: BackendKind,
    sequence: std::sync::atomic::AtomicI64,
}

// SAFETY: c10d's backends and stores are thread-safe (torch.distributed calls them from any
// thread); the handle is only freed on drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group `launch` describes. Every rank must call it; it returns when all joined,
    /// or fails after `timeout`.
    pub fn join(launch: &Launch, backend: BackendKind, timeout: Duration) -> Result<ProcessGroup> {
        let address = format!("{}:{}", launch.master_addr, launch.master_port);
        let init_error = |message: String| DistError::Init { rank: launch.rank, world_size: launch.world_size, address: address.clone(), message };
        if backend == BackendKind::Nccl {
            let gpus = tch::Cuda::device_count().max(0) as usize;
            if gpus == 0 {
                return Err(init_error("NCCL needs GPUs, and this process sees none (a CPU-only run uses Gloo)".into()));
            }
            if launch.local_rank >= gpus {
                return Err(init_error(format!(
                    "local rank {} has no GPU of its own: this node shows {gpus} (NCCL refuses two ranks on one GPU; start at most {gpus} processes a node)",
                    launch.local_rank
                )));
            }
        }
        let host = c_string(&launch.master_addr);
        let prefix = c_string("dllm-rl");
        let loopback = matches!(launch.master_addr.as_str(), "127.0.0.1" | "localhost" | "::1");
        // Gloo binds to GLOO_SOCKET_IFNAME (torch's variable) when set, to loopback for a local
        // job, else to the address this host's name resolves to.
        let interface = c_string(&std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default());
        let gloo_host = c_string(if loopback { "127.0.0.1" } else { "" });
        let mut err: *mut c_char = std::ptr::null_mut();
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let backend_code = match backend {
            BackendKind::Gloo => 0,
            BackendKind::Nccl => 1,
        };
        // SAFETY: every pointer is a live NUL-terminated string or an out-parameter.
        let raw = unsafe {
            dist_init(
                host.as_ptr(),
                launch.master_port,
                launch.rank as c_int,
                launch.world_size as c_int,
                launch.hosts_store() as c_int,
                millis,
                prefix.as_ptr(),
                gloo_host.as_ptr(),
                interface.as_ptr(),
                backend_code,
                launch.local_rank as c_int,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(init_error(take_error(err)));
        }
        let node = launch.rank - launch.local_rank.min(launch.rank);
        let group = ProcessGroup {
            raw,
            rank: launch.rank,
            world_size: launch.world_size,
            local: node..(node + launch.local_world_size).min(launch.world_size),
            backend,
            sequence: 0.into(),
        };
        group.store_add(&format!("pid/{}", launch.rank), std::process::id() as i64).map_err(|e| init_error(e.to_string()))?;
        Ok(group)
    }

    fn store_add(&self, key: &str, value: i64) -> std::result::Result<i64, String> {
        let key = c_string(key);
        let (mut result, mut err) = (0i64, std::ptr::null_mut());
        // SAFETY: a live group, a NUL-terminated key, out-parameters.
        match unsafe { dist_store_add(self.raw, key.as_ptr(), value, &mut result, &mut err) } {
            0 => Ok(result),
            _ => Err(take_error(err)),
        }
    }

    /// Runs one collective, counting it in the store first so that a failure can name the
    /// ranks that never reached it.
    fn collective(&self, operation: &'static str, call: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
        let sequence = self.sequence.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let fail = |message: String, missing: Vec<usize>| DistError::Collective { rank: self.rank, operation, sequence, missing, message };
        if let Err(message) = self.store_add(&format!("seq/{}", self.rank), 1) {
            return Err(fail(format!("the rendezvous store is unreachable (its host, rank 0 or torchrun's agent, is gone?): {message}"), Vec::new()));
        }
        let mut err = std::ptr::null_mut();
        if call(&mut err) == 0 {
            return Ok(());
        }
        let message = take_error(err);
        Err(fail(message, self.missing_ranks(sequence)))
    }

    /// Ranks behind this one in the count of collectives, else ranks of this node whose process
    /// is gone.
    fn missing_ranks(&self, sequence: i64) -> Vec<usize> {
        let behind: Vec<usize> = (0..self.world_size)
            .filter(|&r| r != self.rank)
            .filter(|&r| self.store_add(&format!("seq/{r}"), 0).is_ok_and(|n| n < sequence))
            .collect();
        if !behind.is_empty() {
            return behind;
        }
        self.local
            .clone()
            .filter(|&r| r != self.rank)
            .filter(|&r| match self.store_add(&format!("pid/{r}"), 0) {
                // SAFETY: signal 0 only checks that the process exists.
                Ok(pid) if pid > 0 => unsafe { libc::kill(pid as libc::pid_t, 0) != 0 },
                _ => false,
            })
            .collect()
    }

    /// Reduces `tensor` across ranks in place.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        dense(tensor, "all_reduce")?;
        let ptr = tensor.as_mut_ptr();
        // SAFETY: a live group and tensor.
        self.collective("all_reduce", |err| unsafe { dist_all_reduce(self.raw, ptr, op as c_int, err) })
    }

    /// Reduces `input` (world_size · numel(output) elements) and leaves chunk `rank` in `output`.
    pub fn reduce_scatter(&self, output: &mut Tensor, input: &mut Tensor, op: ReduceOp) -> Result<()> {
        dense(output, "reduce_scatter")?;
        dense(input, "reduce_scatter")?;
        let (out, inp) = (output.as_mut_ptr(), input.as_mut_ptr());
        // SAFETY: a live group and tensors.
        self.collective("reduce_scatter", |err| unsafe { dist_reduce_scatter(self.raw, out, inp, op as c_int, err) })
    }

    /// Gathers every rank's `input` into `output` (world_size · numel(input) elements, rank order).
    pub fn all_gather(&self, output: &mut Tensor, input: &mut Tensor) -> Result<()> {
        dense(output, "all_gather")?;
        dense(input, "all_gather")?;
        let (out, inp) = (output.as_mut_ptr(), input.as_mut_ptr());
        // SAFETY: a live group and tensors.
        self.collective("all_gather", |err| unsafe { dist_all_gather(self.raw, out, inp, err) })
    }

    /// Copies `root`'s `tensor` into every rank's.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        dense(tensor, "broadcast")?;
        let ptr = tensor.as_mut_ptr();
        // SAFETY: a live group and tensor.
        self.collective("broadcast", |err| unsafe { dist_broadcast(self.raw, ptr, root as c_int, err) })
    }

    /// Returns when every rank reached it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        self.collective("barrier", |err| unsafe { dist_barrier(self.raw, err) })
    }
}

fn dense(tensor: &Tensor, operation: &str) -> Result<()> {
    if !tensor.is_contiguous() {
        return Err(DistError::Mismatch(format!("{operation}: the tensor must be contiguous")));
    }
    Ok(())
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by dist_init, freed once.
        unsafe { dist_destroy(self.raw) };
    }
}
