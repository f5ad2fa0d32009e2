//! The job as the trainer sees it: this rank, the world size, and collectives that are no-ops
//! for a single process (no engine at all then).

use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::group::{ProcessGroup, ReduceOp};
use crate::rendezvous::{BackendKind, Launch};
use crate::{DistError, Result};

/// Gradients travel in buckets of about this many bytes (DDP's default, 25 MiB).
pub const BUCKET_BYTES: i64 = 25 << 20;

/// This process's place in the job and, past one process, its process group.
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Ranks on this node (they share its cores and GPUs).
    pub local_world_size: usize,
    group: Option<ProcessGroup>,
    /// The launcher that started the job ("torchrun", "slurm", "env"), or "single".
    pub launcher: &'static str,
}

impl World {
    /// One process, no engine.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, local_world_size: 1, group: None, launcher: "single" }
    }

    /// The job of the launcher's variables (torchrun's, else SLURM's), or [`World::single`].
    /// `cuda` picks NCCL (and this rank's local GPU); Gloo otherwise.
    pub fn from_env(cuda: bool, timeout: Duration) -> Result<World> {
        match Launch::from_env()? {
            None => Ok(World::single()),
            Some(launch) => World::join(&launch, if cuda { BackendKind::Nccl } else { BackendKind::Gloo }, timeout),
        }
    }

    /// Joins the group of `launch`.
    pub fn join(launch: &Launch, backend: BackendKind, timeout: Duration) -> Result<World> {
        let group = ProcessGroup::join(launch, backend, timeout)?;
        Ok(World {
            rank: launch.rank,
            size: launch.world_size,
            local_rank: launch.local_rank,
            local_world_size: launch.local_world_size.max(1),
            group: Some(group),
            launcher: launch.launcher,
        })
    }

    /// Rank 0: the one that writes the run store and the checkpoints, and shows progress.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The process group, past one process (for the sharded collectives of ZeRO).
    pub fn group(&self) -> Option<&ProcessGroup> {
        self.group.as_ref()
    }

    /// The backend in use, if any.
    pub fn backend(&self) -> Option<BackendKind> {
        self.group.as_ref().map(|g| g.backend)
    }

    /// The indices `0..n` this rank takes: a contiguous block, the first `n % size` ranks one more.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        let (base, extra) = (n / self.size, n % self.size);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    /// Reduces `tensor` across ranks in place.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.all_reduce(tensor, op),
        }
    }

    /// Sums `values` across ranks (in f64, on the CPU: metrics and token counts).
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        if self.group.is_none() || values.is_empty() {
            return Ok(());
        }
        let mut t = Tensor::from_slice(values).to_device(self.comm_device());
        self.all_reduce(&mut t, ReduceOp::Sum)?;
        let summed: Vec<f64> = host_vec(t.to_device(Device::Cpu))?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    /// Every rank's `bytes`, in rank order (lengths may differ).
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let Some(group) = &self.group else { return Ok(vec![bytes.to_vec()]) };
        let device = self.comm_device();
        let mut length = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
        let mut lengths = Tensor::zeros([self.size as i64], (Kind::Int64, device));
        group.all_gather(&mut lengths, &mut length)?;
        let lengths: Vec<i64> = host_vec(lengths.to_device(Device::Cpu))?;
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = vec![0u8; longest as usize];
        padded[..bytes.len()].copy_from_slice(bytes);
        let mut mine = Tensor::from_slice(&padded).to_device(device);
        let mut all = Tensor::zeros([self.size as i64 * longest], (Kind::Uint8, device));
        group.all_gather(&mut all, &mut mine)?;
        let all: Vec<u8> = host_vec(all.to_device(Device::Cpu))?;
        Ok(lengths.iter().enumerate().map(|(r, &n)| all[r * longest as usize..r * longest as usize + n as usize].to_vec()).collect())
    }

    /// Copies rank `root`'s `tensor` into every rank's.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.broadcast(tensor, root),
        }
    }

    /// Rank 0's tensors everywhere: `copy_` of each, after a broadcast (bf16 and fp32 alike).
    pub fn broadcast_parameters(&self, tensors: &[Tensor]) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        for t in tensors {
            let mut buffer = t.detach().contiguous();
            self.broadcast(&mut buffer, 0)?;
            tch::no_grad(|| t.detach().copy_(&buffer));
        }
        Ok(())
    }

    /// Returns when every rank reached it.
    pub fn barrier(&self) -> Result<()> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.barrier(),
        }
    }

    /// Sums the gradients of `params` across ranks, in buckets of about [`BUCKET_BYTES`], each
    /// bucket in fp32 whatever the parameters' kind (verl's FSDP reduces bf16 gradients in fp32).
    /// Parameters without a gradient on every rank must be the same ones (all ranks run the same
    /// model); a missing gradient counts as zeros.
    pub fn all_reduce_gradients(&self, params: &[Tensor]) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0i64;
        for p in params.iter().filter(|p| p.requires_grad()) {
            bucket.push(p);
            bytes += p.numel() as i64 * 4;
            if bytes >= BUCKET_BYTES {
                self.reduce_bucket(&bucket)?;
                bucket.clear();
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            self.reduce_bucket(&bucket)?;
        }
        Ok(())
    }

    fn reduce_bucket(&self, params: &[&Tensor]) -> Result<()> {
        // A rank whose loss reached no parameter (no rows this step) still takes part, with zeros:
        // give those parameters a zero gradient so that the sum can be written back.
        let untouched: Vec<Tensor> = params.iter().filter(|p| !p.grad().defined()).map(|p| p.sum(Kind::Float) * 0.0).collect();
        if !untouched.is_empty() {
            Tensor::stack(&untouched, 0).sum(Kind::Float).backward();
        }
        let flat: Vec<Tensor> = params.iter().map(|p| p.grad().to_kind(Kind::Float).reshape([-1])).collect();
        let mut joined = Tensor::cat(&flat, 0).to_device(self.comm_device());
        self.all_reduce(&mut joined, ReduceOp::Sum)?;
        let mut offset = 0i64;
        tch::no_grad(|| {
            for p in params {
                let n = p.numel() as i64;
                let mut g = p.grad();
                let summed = joined.narrow(0, offset, n).view_as(&g).to_device(g.device()).to_kind(g.kind());
                g.copy_(&summed);
                offset += n;
            }
        });
        Ok(())
    }

    /// Where collectives' buffers live: the rank's GPU under NCCL, the CPU under Gloo.
    fn comm_device(&self) -> Device {
        match self.backend() {
            Some(BackendKind::Nccl) => Device::Cuda(self.local_rank),
            _ => Device::Cpu,
        }
    }
}

fn host_vec<T: tch::kind::Element + Copy>(t: Tensor) -> Result<Vec<T>> {
    Vec::<T>::try_from(t).map_err(|e: tch::TchError| DistError::Mismatch(e.to_string()))
}
