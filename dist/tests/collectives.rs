//! Collectives of world size 2 and 3 as threads of one test, on loopback Gloo, checked against
//! plain sums; a missing rank and a missing GPU end as errors that say so.

use std::time::{Duration, Instant};

use dllm_dist::{BackendKind, DistError, Launch, ReduceOp, World};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `body` on every rank of a fresh loopback group, one thread each; returns their results.
fn on_ranks<T: Send>(world_size: usize, body: impl Fn(&World) -> T + Sync) -> Vec<T> {
    let port = free_port();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let body = &body;
                scope.spawn(move || {
                    let world = World::join(&Launch::loopback(rank, world_size, port), BackendKind::Gloo, Duration::from_secs(30)).expect("join");
                    let out = body(&world);
                    world.barrier().expect("barrier");
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    })
}

/// Rank r's test tensor: 7 values (divisible by neither 2 nor 3).
fn values(rank: usize) -> Vec<f32> {
    (0..7).map(|i| (i as f32) * 0.5 + rank as f32 * 10.0 - 3.0).collect()
}

#[test]
fn all_reduce_sums_like_a_plain_sum_in_f32_and_bf16() {
    for world_size in [2, 3] {
        let expected: Vec<f32> = (0..7).map(|i| (0..world_size).map(|r| values(r)[i]).sum()).collect();
        let results = on_ranks(world_size, |world| {
            let mut f32s = Tensor::from_slice(&values(world.rank));
            world.all_reduce(&mut f32s, ReduceOp::Sum).unwrap();
            let mut bf16 = Tensor::from_slice(&values(world.rank)).to_kind(Kind::BFloat16);
            world.all_reduce(&mut bf16, ReduceOp::Sum).unwrap();
            let mut avg = Tensor::from_slice(&values(world.rank));
            world.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
            let mut max = Tensor::from_slice(&values(world.rank));
            world.all_reduce(&mut max, ReduceOp::Max).unwrap();
            let to_vec = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap();
            (to_vec(f32s), to_vec(bf16), to_vec(avg), to_vec(max))
        });
        for (rank, (sum, bf16, avg, max)) in results.into_iter().enumerate() {
            assert_eq!(sum, expected, "world {world_size}, rank {rank}");
            for ((b, e), a) in bf16.iter().zip(&expected).zip(&avg) {
                // bf16 keeps 8 bits of mantissa: each input and the sum are rounded.
                assert!((b - e).abs() <= 0.02 * e.abs().max(1.0), "bf16 {b} vs {e}");
                assert!((a - e / world_size as f32).abs() < 1e-5, "avg {a} vs {e}/{world_size}");
            }
            assert_eq!(max, values(world_size - 1), "max");
        }
    }
}

#[test]
fn reduce_scatter_and_all_gather_are_a_sharded_all_reduce() {
    for world_size in [2, 3] {
        let results = on_ranks(world_size, |world| {
            let group_of = |t: &World| t.size;
            let shard = 4i64;
            let n = shard * group_of(world) as i64;
            let mut input = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * (world.rank as f64 + 1.0);
            let mut mine = Tensor::zeros([shard], (Kind::Float, tch::Device::Cpu));
            let group = world_group(world);
            group.reduce_scatter(&mut mine, &mut input, ReduceOp::Sum).unwrap();
            let mut whole = Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
            group.all_gather(&mut whole, &mut mine).unwrap();
            Vec::<f32>::try_from(whole).unwrap()
        });
        let scale: f32 = (1..=world_size).map(|r| r as f32).sum();
        let expected: Vec<f32> = (0..4 * world_size).map(|i| i as f32 * scale).collect();
        for got in results {
            assert_eq!(got, expected, "world {world_size}");
        }
    }
}

/// The raw group of a world, for the sharded collectives the trainer uses through ZeRO.
fn world_group(world: &World) -> &dllm_dist::ProcessGroup {
    world.group().expect("a joined world has a group")
}

#[test]
fn bytes_of_different_lengths_and_parameters_from_rank_zero() {
    let results = on_ranks(3, |world| {
        let mine = vec![world.rank as u8; world.rank * 5];
        let gathered = world.all_gather_bytes(&mine).unwrap();
        let params = vec![Tensor::from_slice(&values(world.rank)), Tensor::from_slice(&values(world.rank)).to_kind(Kind::BFloat16)];
        world.broadcast_parameters(&params).unwrap();
        let mut sums = [world.rank as f64, 1.0];
        world.sum_f64(&mut sums).unwrap();
        (gathered, Vec::<f32>::try_from(params[0].shallow_clone()).unwrap(), Vec::<f32>::try_from(params[1].to_kind(Kind::Float)).unwrap(), sums)
    });
    for (gathered, p0, p1, sums) in results {
        assert_eq!(gathered, vec![vec![], vec![1u8; 5], vec![2u8; 10]]);
        assert_eq!(p0, values(0));
        let rounded = Vec::<f32>::try_from(Tensor::from_slice(&values(0)).to_kind(Kind::BFloat16).to_kind(Kind::Float)).unwrap();
        assert_eq!(p1, rounded);
        assert_eq!(sums, [3.0, 3.0]);
    }
}

#[test]
fn gradients_are_summed_in_buckets_and_a_rank_without_rows_takes_part() {
    let results = on_ranks(2, |world| {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32; 5]).to_kind(Kind::BFloat16).set_requires_grad(true);
        // Rank 0 has rows this step, rank 1 none (its parameters have no gradient at all).
        if world.rank == 0 {
            let loss = (&a * &a).sum(Kind::Float) + (b.to_kind(Kind::Float) * 3.0).sum(Kind::Float);
            loss.backward();
        }
        world.all_reduce_gradients(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        (Vec::<f32>::try_from(a.grad()).unwrap(), Vec::<f32>::try_from(b.grad().to_kind(Kind::Float)).unwrap())
    });
    for (ga, gb) in results {
        assert_eq!(ga, [2.0, 4.0, 6.0]);
        assert_eq!(gb, [3.0; 5]);
    }
}

#[test]
fn a_rank_that_leaves_is_named_by_the_others() {
    let port = free_port();
    let started = Instant::now();
    let outcome = std::thread::scope(|scope| {
        let leaver = scope.spawn(|| {
            let world = World::join(&Launch::loopback(1, 2, port), BackendKind::Gloo, Duration::from_secs(10)).unwrap();
            drop(world);
        });
        let stayer = scope.spawn(|| {
            let world = World::join(&Launch::loopback(0, 2, port), BackendKind::Gloo, Duration::from_secs(10)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let mut t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            world.all_reduce(&mut t, ReduceOp::Sum)
        });
        leaver.join().unwrap();
        stayer.join().unwrap()
    });
    let err = outcome.expect_err("the collective cannot succeed without rank 1");
    assert!(started.elapsed() < Duration::from_secs(20), "it waited {:?}", started.elapsed());
    match &err {
        DistError::Collective { missing, operation, .. } => {
            assert_eq!(missing, &[1], "{err}");
            assert_eq!(*operation, "all_reduce");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("rank 1 never reached it"), "{err}");
    eprintln!("{err}");
}

#[test]
fn a_rank_that_never_comes_ends_the_start_after_the_time_out() {
    let started = Instant::now();
    let err = match World::join(&Launch::loopback(0, 2, free_port()), BackendKind::Gloo, Duration::from_secs(2)) {
        Ok(_) => panic!("joined a group of 2 alone"),
        Err(e) => e,
    };
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let text = err.to_string();
    assert!(text.starts_with("rank 0 of 2: could not join the process group at 127.0.0.1:"), "{text}");
}

#[test]
fn nccl_without_a_gpu_fails_cleanly() {
    if tch::Cuda::is_available() {
        return;
    }
    let err = match World::join(&Launch::loopback(0, 1, free_port()), BackendKind::Nccl, Duration::from_secs(10)) {
        Ok(_) => panic!("NCCL started without a GPU"),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    assert!(err.contains("NCCL"), "{err}");
    assert!(err.contains("NCCL needs GPUs, and this process sees none"), "{err}");
}
