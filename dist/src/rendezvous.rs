//! Where a process stands in its job: from torchrun's variables, else SLURM's, else alone.

use crate::{DistError, Result};

/// The backend of a process group: Gloo for CPU tensors, NCCL for CUDA ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Gloo,
    Nccl,
}

/// One process's place in a job, as its launcher describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// Index among the processes of this node (the GPU it uses).
    pub local_rank: usize,
    pub local_world_size: usize,
    /// The rendezvous store's host and port.
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store; every rank (rank 0 too) connects as a client.
    pub agent_store: bool,
    /// Which launcher set the variables: "torchrun", "slurm" or "env".
    pub launcher: &'static str,
}

/// torchrun's default port, also used when SLURM gives none.
pub const DEFAULT_PORT: u16 = 29500;

fn parse<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, variable: &'static str) -> Result<Option<T>> {
    match get(variable) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| DistError::Environment { variable, value, why: "not a non-negative integer".into() }),
    }
}

/// The first host of a SLURM node list (`node[01-04,07],gpu3` → `node01`).
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let (name, rest) = list.split_at(end);
    if name.is_empty() {
        return None;
    }
    if let Some(range) = rest.strip_prefix('[') {
        let first = range.split([',', ']']).next()?.split('-').next()?;
        return Some(format!("{name}{first}"));
    }
    Some(name.to_string())
}

impl Launch {
    /// Rank `rank` of a job of `world_size` processes on this host, with the store at
    /// `127.0.0.1:port` hosted by rank 0 (tests and benchmarks start ranks as threads this way).
    pub fn loopback(rank: usize, world_size: usize, port: u16) -> Launch {
        Launch {
            rank,
            world_size,
            local_rank: rank,
            local_world_size: world_size,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            agent_store: false,
            launcher: "env",
        }
    }

    /// From the process environment; `None` when no launcher set a world size above 1.
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(&|k| std::env::var(k).ok())
    }

    /// From variables looked up by `get` (the environment, or a test's table).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let (rank, world_size, local_rank, local_world_size, launcher) = if get("WORLD_SIZE").is_some() || get("RANK").is_some() {
            let world_size: usize = parse(get, "WORLD_SIZE")?.unwrap_or(1);
            let rank: usize = parse(get, "RANK")?.unwrap_or(0);
            let local_rank = parse(get, "LOCAL_RANK")?.unwrap_or(rank);
            let local_world_size = parse(get, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
            let launcher = if get("TORCHELASTIC_RUN_ID").is_some() || get("TORCHELASTIC_USE_AGENT_STORE").is_some() { "torchrun" } else { "env" };
            (rank, world_size, local_rank, local_world_size, launcher)
        } else if get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some() {
            let world_size: usize = parse(get, "SLURM_NTASKS")?.unwrap_or(1);
            let rank: usize = parse(get, "SLURM_PROCID")?.unwrap_or(0);
            let local_rank = parse(get, "SLURM_LOCALID")?.unwrap_or(0);
            let local_world_size = match get("SLURM_NTASKS_PER_NODE") {
                // "4" or "4(x2)": the tasks of this node.
                Some(v) => v.split('(').next().and_then(|n| n.trim().parse().ok()).unwrap_or(world_size),
                None => world_size,
            };
            (rank, world_size, local_rank, local_world_size, "slurm")
        } else {
            return Ok(None);
        };
        if world_size == 0 {
            return Err(DistError::Environment { variable: "WORLD_SIZE", value: "0".into(), why: "a job has at least one process".into() });
        }
        if rank >= world_size {
            let variable = if launcher == "slurm" { "SLURM_PROCID" } else { "RANK" };
            return Err(DistError::Environment { variable, value: rank.to_string(), why: format!("must be below the world size {world_size}") });
        }
        if world_size == 1 {
            return Ok(None);
        }
        let master_addr = match get("MASTER_ADDR") {
            Some(addr) => addr,
            None if launcher == "slurm" => get("SLURM_NODELIST")
                .or_else(|| get("SLURM_JOB_NODELIST"))
                .and_then(|l| first_slurm_host(&l))
                .ok_or(DistError::Environment { variable: "MASTER_ADDR", value: String::new(), why: "unset, and SLURM_NODELIST names no host".into() })?,
            None => {
                return Err(DistError::Environment {
                    variable: "MASTER_ADDR",
                    value: String::new(),
                    why: format!("unset: with WORLD_SIZE={world_size}, every rank needs the rendezvous host (torchrun sets it)"),
                })
            }
        };
        let master_port = match get("MASTER_PORT") {
            Some(value) => value.trim().parse().map_err(|_| DistError::Environment { variable: "MASTER_PORT", value, why: "not a port number".into() })?,
            None if launcher == "slurm" => DEFAULT_PORT,
            None => return Err(DistError::Environment { variable: "MASTER_PORT", value: String::new(), why: "unset (torchrun sets it)".into() }),
        };
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        Ok(Some(Launch { rank, world_size, local_rank, local_world_size, master_addr, master_port, agent_store, launcher }))
    }

    /// Whether this rank hosts the rendezvous store (rank 0, unless torchrun's agent does).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(&|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_with_the_agent_store() {
        let got = launch(&[
            ("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29400"), ("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RUN_ID", "x"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((got.rank, got.world_size, got.local_rank, got.local_world_size), (3, 8, 1, 2));
        assert_eq!((got.master_addr.as_str(), got.master_port, got.agent_store, got.launcher), ("10.0.0.1", 29400, true, "torchrun"));
        assert!(!got.hosts_store());
    }

    #[test]
    fn slurm_variables_take_the_first_node_as_master() {
        let got = launch(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "5"), ("SLURM_NTASKS_PER_NODE", "8(x2)"), ("SLURM_NODELIST", "gpu[07-08]")])
            .unwrap()
            .unwrap();
        assert_eq!((got.rank, got.world_size, got.local_rank, got.local_world_size), (5, 16, 5, 8));
        assert_eq!((got.master_addr.as_str(), got.master_port, got.launcher), ("gpu07", DEFAULT_PORT, "slurm"));
        assert_eq!(first_slurm_host("a1,b2"), Some("a1".into()));
        assert_eq!(first_slurm_host("node[3,5-6]"), Some("node3".into()));
    }

    #[test]
    fn alone_without_a_launcher_or_with_one_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
    }

    #[test]
    fn bad_variables_are_named() {
        let err = launch(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(err.starts_with("RANK=\"2\": must be below the world size 2"), "{err}");
        let err = launch(&[("RANK", "0"), ("WORLD_SIZE", "two")]).unwrap_err().to_string();
        assert!(err.contains("WORLD_SIZE=\"two\""), "{err}");
        let err = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(err.starts_with("MASTER_ADDR=\"\": unset"), "{err}");
        let err = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]).unwrap_err().to_string();
        assert!(err.contains("MASTER_PORT=\"99999\": not a port number"), "{err}");
    }
}
