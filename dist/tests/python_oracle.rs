//! A Python `torch.distributed` rank and a Rust rank in one Gloo group: the Python side is
//! the oracle for an all-reduce and an all-gather (the venv of `scripts/setup` has torch).

use std::process::{Command, Stdio};
use std::time::Duration;

use dllm_dist::{BackendKind, Launch, ReduceOp, World};
use tch::{Kind, Tensor};

const PYTHON_RANK: &str = r#"
import datetime, sys
import torch
import torch.distributed as dist

port = int(sys.argv[1])
store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=datetime.timedelta(seconds=30))
options = dist.ProcessGroupGloo._Options()
options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
options._timeout = datetime.timedelta(seconds=30)
group = dist.ProcessGroupGloo(dist.PrefixStore("dllm-rl", store), 1, 2, options)
t = torch.tensor([1.5, -2.0, 3.25, 7.0, 0.5])
group.allreduce([t]).wait()
mine = torch.tensor([10, 20, 30], dtype=torch.int64)
out = torch.zeros(6, dtype=torch.int64)
group._allgather_base(out, mine).wait()
group.barrier().wait()
print(" ".join(repr(float(x)) for x in t.tolist()) + "|" + " ".join(str(int(x)) for x in out.tolist()))
"#;

#[test]
fn a_python_rank_computes_the_same_all_reduce() {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(python)
        .args(["-c", PYTHON_RANK, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python (scripts/setup makes it)");
    let launch = Launch::loopback(0, 2, port);
    let world = World::join(&launch, BackendKind::Gloo, Duration::from_secs(60)).expect("join with the Python rank");
    let mut t = Tensor::from_slice(&[0.25f32, 1.0, -0.25, 2.0, 4.5]);
    world.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    let mut mine = Tensor::from_slice(&[1i64, 2, 3]);
    let mut all = Tensor::zeros([6], (Kind::Int64, tch::Device::Cpu));
    world.group().unwrap().all_gather(&mut all, &mut mine).unwrap();
    world.barrier().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python rank: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    let (theirs, gathered) = printed.trim().split_once('|').expect("two parts");
    let theirs: Vec<f32> = theirs.split(' ').map(|x| x.parse().unwrap()).collect();
    let ours = Vec::<f32>::try_from(t).unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours, [1.75, -1.0, 3.0, 9.0, 5.0]);
    let ours_gathered: Vec<i64> = Vec::try_from(all).unwrap();
    assert_eq!(ours_gathered, [1, 2, 3, 10, 20, 30]);
    assert_eq!(gathered, "1 2 3 10 20 30");
}
