//! `poll_oneoff` for the guest, replacing wasmtime-wasi's: a sleep is served in 10 ms slices
//! that stop at the run's deadline.
//!
//! wasmtime-wasi sleeps on the host thread, where epoch interruption cannot reach, so a guest
//! `time.sleep(1000)` would hold a worker for 1000 s. The guest's stdio are in-memory pipes
//! (always ready), so a subscription on a descriptor is answered at once.

use std::time::{Duration, Instant};

use wasmtime::{Caller, Extern, Linker};

use super::sandbox::State;

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const FLAG_ABSTIME: u16 = 1;
const ERRNO_INVAL: i32 = 28;
const ERRNO_FAULT: i32 = 21;
const SLICE: Duration = Duration::from_millis(10);

/// The guest's monotonic clock: nanoseconds since the run's store was made. Ours, so that an
/// absolute sleep deadline can be turned into a duration.
pub(crate) struct RunClock(pub(crate) Instant);

impl wasmtime_wasi::HostMonotonicClock for RunClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

struct Subscription {
    userdata: u64,
    tag: u8,
    clock: u32,
    timeout: u64,
    flags: u16,
}

fn read_subscription(bytes: &[u8]) -> Subscription {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    Subscription {
        userdata: u64_at(0),
        tag: bytes[8],
        clock: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
        timeout: u64_at(24),
        flags: u16::from_le_bytes(bytes[40..42].try_into().expect("2 bytes")),
    }
}

fn event(userdata: u64, tag: u8) -> [u8; EVENT_SIZE] {
    let mut e = [0u8; EVENT_SIZE];
    e[0..8].copy_from_slice(&userdata.to_le_bytes());
    e[10] = tag;
    e
}

/// Adds the replacement to a linker that already has WASI preview 1.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: Caller<'_, State>, subs: i32, events: i32, count: i32, nevents: i32| -> wasmtime::Result<i32> {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return Ok(ERRNO_FAULT);
            };
            let (subs, events, count, nevents) = (subs as u32 as usize, events as u32 as usize, count as u32 as usize, nevents as u32 as usize);
            if count == 0 || count > 4096 {
                return Ok(ERRNO_INVAL);
            }
            let mut raw = vec![0u8; count * SUBSCRIPTION_SIZE];
            if memory.read(&caller, subs, &mut raw).is_err() {
                return Ok(ERRNO_FAULT);
            }
            let list: Vec<Subscription> = raw.chunks(SUBSCRIPTION_SIZE).map(read_subscription).collect();
            let mut out = Vec::new();
            // Descriptors are in-memory pipes: ready now.
            for s in list.iter().filter(|s| s.tag != TAG_CLOCK) {
                out.extend_from_slice(&event(s.userdata, s.tag));
            }
            if out.is_empty() {
                let origin = caller.data().clock_origin;
                let now_for = |s: &Subscription| -> u64 {
                    if s.clock == CLOCK_REALTIME {
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as u64)
                    } else {
                        origin.elapsed().as_nanos() as u64
                    }
                };
                let wait = |s: &Subscription| -> u64 {
                    if s.flags & FLAG_ABSTIME != 0 {
                        s.timeout.saturating_sub(now_for(s))
                    } else {
                        s.timeout
                    }
                };
                let Some(first) = list.iter().min_by_key(|s| wait(s)) else { return Ok(ERRNO_INVAL) };
                let until = Instant::now() + Duration::from_nanos(wait(first));
                loop {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    if caller.data_mut().deadline_passed() {
                        // Same as the epoch callback's verdict: the run is out of time.
                        return Err(wasmtime::Trap::Interrupt.into());
                    }
                    std::thread::sleep((until - now).min(SLICE));
                }
                out.extend_from_slice(&event(first.userdata, TAG_CLOCK));
            }
            let n = (out.len() / EVENT_SIZE) as u32;
            if memory.write(&mut caller, events, &out).is_err()
                || memory.write(&mut caller, nevents, &n.to_le_bytes()).is_err()
            {
                return Ok(ERRNO_FAULT);
            }
            Ok(0)
        },
    )?;
    Ok(())
}
