//! The run store's schema, as migrations: each entry brings the database from version i to i+1
//! (`PRAGMA user_version`), inside one transaction. Never edit an applied migration; append.
//!
//! Tables (see `docs/run-store.md` for the columns and example queries):
//! - `runs`: one row per `train` / `sft` run: resolved config (JSON), code version, status.
//! - `steps`: one row per step and attempt; `metrics` is a JSON object (reward mean and
//!   components, solve fractions, loss, clip fraction, KL, grad norm, LR, tokens/s, seconds per
//!   stage). `superseded = 1` marks steps redone after a resume from an earlier checkpoint.
//! - `rollouts`: one row per sampled completion, with its reward, verdict, decode order and hack
//!   signals; `test_results`: one row per test of a rollout.
//! - `checkpoints`: what was saved when, and where.
//! - `prompts` (version 2): each prompt a run used, as the model saw it, with its source and
//!   kind, so `dllm-rl audit` needs nothing but the store; `rollouts.pieces` (version 2): the
//!   text of each response token, aligned with `step_map`, to show the decode order.

pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
        config TEXT NOT NULL CHECK (json_valid(config)),
        code_version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        superseded INTEGER NOT NULL DEFAULT 0,
        at TEXT NOT NULL,
        metrics TEXT NOT NULL CHECK (json_valid(metrics)),
        PRIMARY KEY (run_id, step, attempt)
    );
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        superseded INTEGER NOT NULL DEFAULT 0,
        prompt_id TEXT NOT NULL,
        sample INTEGER NOT NULL,
        seed TEXT NOT NULL,
        completion TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        step_map TEXT NOT NULL CHECK (json_valid(step_map)),
        reward REAL,
        reward_components TEXT CHECK (reward_components IS NULL OR json_valid(reward_components)),
        verdict TEXT NOT NULL,
        hack_signals TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(hack_signals))
    );
    CREATE INDEX rollouts_by_step ON rollouts (run_id, step);
    CREATE INDEX rollouts_by_prompt ON rollouts (run_id, prompt_id);
    CREATE TABLE test_results (
        rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
        test INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        seconds REAL NOT NULL,
        stdout TEXT NOT NULL DEFAULT '',
        stderr TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (rollout_id, test)
    );
    CREATE TABLE checkpoints (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    "#,
    // 2: prompts as the model saw them; token pieces for the decode order.
    r#"
    CREATE TABLE prompts (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        prompt_id TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL,
        PRIMARY KEY (run_id, prompt_id)
    );
    ALTER TABLE rollouts ADD COLUMN pieces TEXT CHECK (pieces IS NULL OR json_valid(pieces));
    "#,
];
