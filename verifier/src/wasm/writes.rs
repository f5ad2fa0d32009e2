//! A run's write budget: what a guest may write to the host in all, its scratch folder, stdout
//! and stderr together.
//!
//! wasmtime-wasi 48 puts no quota on a preopened folder, and the guest's writes land on the
//! host's disk (`/tmp/dllm-wasm-*`): a guest could fill it. So the WASI calls that write or
//! create are wrapped: each is charged before it runs, and one that would overspend ends the
//! run (an output-limit verdict, as the native sandbox's file-size limit gives). Counting what is
//! written, not what a file holds, keeps the charge exact and cheap: no file is looked at.
//! stdout and stderr are charged too: a file renumbered onto descriptor 1 is still a file.
//!
//! A wrapper cannot call wasmtime-wasi's function itself: that one finds the guest's memory
//! among its caller's exports, and a call from the host has no caller instance. So each store
//! gets a small relay module, instantiated on the first charged call: it imports the guest's
//! memory and the original functions and exports both, and the wrappers call the originals
//! through it.

use std::sync::Arc;

use wasmtime::{Caller, Engine, Extern, Func, FuncType, Instance, Linker, Module, Val, ValType};

use super::sandbox::State;

const MODULE: &str = "wasi_snapshot_preview1";
/// What creating a file, folder or link costs: about its inode and folder entry.
const CREATE_COST: u64 = 1 << 10;
/// `oflags::creat` of `path_open`.
const O_CREAT: i32 = 1;

/// The budget of one run.
pub(crate) struct WriteBudget {
    total: u64,
    left: u64,
    /// The relay's exports: the original WASI functions, by their place in [`WRAPPED`].
    relay: Option<[Func; WRAPPED.len()]>,
}

impl WriteBudget {
    pub(crate) fn new(total: u64) -> Self {
        WriteBudget { total, left: total, relay: None }
    }
}

/// How a run ends when its budget is spent (see `sandbox::end_of`).
#[derive(Debug, thiserror::Error)]
#[error("the guest wrote more than its budget of {0} bytes")]
pub(crate) struct BudgetSpent(pub u64);

/// A wrapped WASI function: its name, its parameters (it returns an errno) and what a call costs.
struct Wrapped {
    name: &'static str,
    params: &'static [Param],
    cost: fn(&mut Caller<'_, State>, &[Val]) -> u64,
}

#[derive(Clone, Copy)]
enum Param {
    I32,
    I64,
}

use Param::{I32, I64};

impl Param {
    fn wat(self) -> &'static str {
        match self {
            I32 => "i32",
            I64 => "i64",
        }
    }

    fn val_type(self) -> ValType {
        match self {
            I32 => ValType::I32,
            I64 => ValType::I64,
        }
    }
}

const WRAPPED: [Wrapped; 6] = [
    Wrapped { name: "fd_write", params: &[I32, I32, I32, I32], cost: written },
    Wrapped { name: "fd_pwrite", params: &[I32, I32, I32, I64, I32], cost: written },
    Wrapped { name: "path_open", params: &[I32, I32, I32, I32, I32, I64, I64, I32, I32], cost: opened },
    Wrapped { name: "path_create_directory", params: &[I32, I32, I32], cost: created },
    Wrapped { name: "path_symlink", params: &[I32, I32, I32, I32, I32], cost: created },
    Wrapped { name: "path_link", params: &[I32, I32, I32, I32, I32, I32, I32], cost: created },
];

fn arg(args: &[Val], i: usize) -> u32 {
    args.get(i).and_then(Val::i32).unwrap_or(0) as u32
}

/// `fd_write` and `fd_pwrite` (`fd, iovs, iovs_len, ...`) write the first non-empty buffer of
/// their list (wasmtime-wasi's `first_non_empty_ciovec`): its length. A list that cannot be
/// read costs nothing: the call itself then fails.
fn written(caller: &mut Caller<'_, State>, args: &[Val]) -> u64 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return 0 };
    let (iovs, count) = (arg(args, 1) as usize, arg(args, 2) as usize);
    let data = memory.data(&*caller);
    for i in 0..count {
        let Some(iov) = data.get(iovs + 8 * i..iovs + 8 * i + 8) else { return 0 };
        let len = u32::from_le_bytes(iov[4..].try_into().expect("4 bytes"));
        if len != 0 {
            return len.into();
        }
    }
    0
}

/// `path_open` creates a file only with `O_CREAT` (`oflags`, its fifth parameter).
fn opened(_: &mut Caller<'_, State>, args: &[Val]) -> u64 {
    if arg(args, 4) as i32 & O_CREAT != 0 {
        CREATE_COST
    } else {
        0
    }
}

fn created(_: &mut Caller<'_, State>, _: &[Val]) -> u64 {
    CREATE_COST
}

/// The relay module (see the module doc), in the text format.
fn relay_source() -> String {
    let mut wat = String::from("(module\n  (import \"guest\" \"memory\" (memory 0))\n");
    for (i, w) in WRAPPED.iter().enumerate() {
        let params: Vec<&str> = w.params.iter().map(|p| p.wat()).collect();
        wat += &format!("  (import \"wasi\" \"{}\" (func $f{i} (param {}) (result i32)))\n", w.name, params.join(" "));
    }
    wat += "  (export \"memory\" (memory 0))\n";
    for (i, w) in WRAPPED.iter().enumerate() {
        let params: Vec<&str> = w.params.iter().map(|p| p.wat()).collect();
        let args: Vec<String> = (0..w.params.len()).map(|k| format!("local.get {k}")).collect();
        wat += &format!(
            "  (func (export \"{}\") (param {}) (result i32) {} call $f{i})\n",
            w.name,
            params.join(" "),
            args.join(" ")
        );
    }
    wat + ")\n"
}

/// This store's relay, instantiated on first use with the guest's memory and the original
/// functions (from `wasi`, a linker without the wrappers).
fn relay(caller: &mut Caller<'_, State>, wasi: &Linker<State>, module: &Module) -> wasmtime::Result<[Func; WRAPPED.len()]> {
    if let Some(relay) = caller.data().writes.relay {
        return Ok(relay);
    }
    let Some(memory @ Extern::Memory(_)) = caller.get_export("memory") else {
        wasmtime::bail!("the guest exports no memory");
    };
    let mut imports = vec![memory];
    for w in &WRAPPED {
        imports.push(wasi.get(&mut *caller, MODULE, w.name)?);
    }
    let instance = Instance::new(&mut *caller, module, &imports)?;
    let mut funcs = Vec::with_capacity(WRAPPED.len());
    for w in &WRAPPED {
        funcs.push(instance.get_func(&mut *caller, w.name).ok_or_else(|| wasmtime::format_err!("relay lacks {}", w.name))?);
    }
    let relay: [Func; WRAPPED.len()] = funcs.try_into().expect("one per wrapped function");
    caller.data_mut().writes.relay = Some(relay);
    Ok(relay)
}

/// Wraps the WASI functions that write or create in `linker`, which already has WASI
/// preview 1; the wrappers call the originals through the relay once charged.
pub(crate) fn add_to_linker(linker: &mut Linker<State>, engine: &Engine) -> wasmtime::Result<()> {
    let wasi = Arc::new(linker.clone());
    let module = Module::new(engine, relay_source())?;
    linker.allow_shadowing(true);
    for (index, wrapped) in WRAPPED.iter().enumerate() {
        let ty = FuncType::new(engine, wrapped.params.iter().map(|p| p.val_type()), [ValType::I32]);
        let (wasi, module) = (Arc::clone(&wasi), module.clone());
        let cost = wrapped.cost;
        linker.func_new(MODULE, wrapped.name, ty, move |mut caller, args, results| {
            let cost = cost(&mut caller, args);
            let budget = &mut caller.data_mut().writes;
            if cost > budget.left {
                return Err(BudgetSpent(budget.total).into());
            }
            budget.left -= cost;
            relay(&mut caller, &wasi, &module)?[index].call(&mut caller, args, results)
        })?;
    }
    Ok(())
}
