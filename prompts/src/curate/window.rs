//! Release-window filtering, as LiveCodeBench's `--start_date`/`--end_date`: keep the tasks first
//! published within [start, end], both days included. Evaluating only on problems published
//! after a model's training cut-off (and training only on those before) rules out contamination
//! that text matching cannot see: a paraphrased statement, a solution posted online.

use dllm_verifier::{ReleaseDate, Task};

use super::{Curated, Decision};

#[derive(Debug, Clone, Default)]
pub struct WindowConfig {
    /// First release day kept; open when `None`.
    pub start: Option<ReleaseDate>,
    /// Last release day kept; open when `None`.
    pub end: Option<ReleaseDate>,
    /// Keep tasks without a release date (flagged) instead of dropping them: a window cannot
    /// vouch for a task whose date it does not know.
    pub keep_undated: bool,
}

pub fn window(tasks: Vec<Task>, cfg: &WindowConfig) -> Curated {
    const STEP: &str = "window";
    let decisions = tasks
        .iter()
        // Reasons put their kind before the colon: the summary counts drops by that part.
        .map(|task| match &task.released {
            None if cfg.keep_undated => Decision::keep(task, STEP, "flagged: no release date", serde_json::Value::Null),
            None => Decision::drop(task, STEP, "no release date", serde_json::Value::Null),
            Some(day) => {
                let numbers = serde_json::json!({ "released": day.as_str() });
                match (&cfg.start, &cfg.end) {
                    (Some(start), _) if day < start => Decision::drop(task, STEP, format!("before the window: released {day}, it starts {start}"), numbers),
                    (_, Some(end)) if day > end => Decision::drop(task, STEP, format!("after the window: released {day}, it ends {end}"), numbers),
                    _ => Decision::keep(task, STEP, format!("in the window: released {day}"), numbers),
                }
            }
        })
        .collect();
    Curated::from_decisions(tasks, decisions)
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    fn dated(id: &str, day: Option<&str>) -> Task {
        let mut t = task(id, "livecodebench", "p");
        t.released = day.map(|d| d.parse().unwrap());
        t
    }

    #[test]
    fn keeps_the_days_in_the_window_both_ends_included() {
        let tasks = vec![
            dated("old", Some("2024-07-31")),
            dated("first", Some("2024-08-01")),
            dated("last", Some("2025-01-31")),
            dated("new", Some("2025-02-01")),
            dated("undated", None),
        ];
        let day = |d: &str| Some(d.parse::<ReleaseDate>().unwrap());
        let cfg = WindowConfig { start: day("2024-08-01"), end: day("2025-01-31"), keep_undated: false };
        let out = window(tasks.clone(), &cfg);
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["first", "last"]);
        let reasons: Vec<&str> = out.decisions.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons[0], "before the window: released 2024-07-31, it starts 2024-08-01");
        assert_eq!(reasons[3], "after the window: released 2025-02-01, it ends 2025-01-31");
        assert_eq!(reasons[4], "no release date");
        assert_eq!(out.decisions[1].numbers["released"], "2024-08-01");

        // An open end, and undated tasks kept but flagged.
        let cfg = WindowConfig { start: day("2025-01-01"), end: None, keep_undated: true };
        let out = window(tasks, &cfg);
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["last", "new", "undated"]);
        assert_eq!(out.decisions[4].reason, "flagged: no release date");
    }
}
