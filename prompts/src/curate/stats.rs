//! Statistics of a task set: counts by source and kind, numbers of tests, prompt lengths, and,
//! given a model's pass rates, their histogram.

use std::collections::{BTreeMap, HashMap};

use dllm_verifier::{ReleaseDate, Task};
use serde::Serialize;

use super::difficulty::PassRate;
use super::test_count;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub min: usize,
    pub median: usize,
    pub p90: usize,
    pub max: usize,
}

fn summary(mut values: Vec<usize>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Summary { min: values[0], median: at(0.5), p90: at(0.9), max: values[values.len() - 1] })
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub tasks: usize,
    pub with_reference: usize,
    pub by_source: BTreeMap<String, usize>,
    pub by_kind: BTreeMap<String, usize>,
    /// Tasks by number of tests, in order: "0", "1", "2-4", "5-9", "10-19", "20+".
    pub by_test_count: Vec<(String, usize)>,
    pub tests: Option<Summary>,
    pub prompt_chars: Option<Summary>,
    /// Tasks by pass rate, in order ("0", "(0, 0.25]", ..., "1", "unrated"), when rates are
    /// given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<Vec<(String, usize)>>,
    /// The span of release dates, when any task has one (what `prompts window` cuts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<ReleaseSpan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseSpan {
    pub first: ReleaseDate,
    pub last: ReleaseDate,
    pub dated: usize,
    pub undated: usize,
}

const TEST_BUCKETS: [&str; 6] = ["0", "1", "2-4", "5-9", "10-19", "20+"];
const RATE_BUCKETS: [&str; 7] = ["0", "(0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1)", "1", "unrated"];

/// Counts in the buckets' order, empty buckets left out.
fn ordered(counts: BTreeMap<&'static str, usize>, order: &[&str]) -> Vec<(String, usize)> {
    order.iter().filter_map(|b| counts.get(b).map(|&n| (b.to_string(), n))).collect()
}

fn test_bucket(n: usize) -> &'static str {
    match n {
        0 => "0",
        1 => "1",
        2..=4 => "2-4",
        5..=9 => "5-9",
        10..=19 => "10-19",
        _ => "20+",
    }
}

fn rate_bucket(rate: f64) -> &'static str {
    if rate <= 0.0 {
        "0"
    } else if rate <= 0.25 {
        "(0, 0.25]"
    } else if rate <= 0.5 {
        "(0.25, 0.5]"
    } else if rate <= 0.75 {
        "(0.5, 0.75]"
    } else if rate < 1.0 {
        "(0.75, 1)"
    } else {
        "1"
    }
}

pub fn stats(tasks: &[Task], rates: Option<&HashMap<String, PassRate>>) -> Stats {
    let mut by_source = BTreeMap::new();
    let mut by_kind = BTreeMap::new();
    let mut by_test_count = BTreeMap::new();
    for t in tasks {
        *by_source.entry(t.source.clone().unwrap_or_else(|| "-".into())).or_insert(0) += 1;
        *by_kind.entry(t.kind().to_string()).or_insert(0) += 1;
        *by_test_count.entry(test_bucket(test_count(t))).or_insert(0) += 1;
    }
    let pass_rate = rates.map(|rates| {
        let mut hist = BTreeMap::new();
        for t in tasks {
            let bucket = rates.get(&t.id).map_or("unrated", |r| rate_bucket(r.passed as f64 / r.samples.max(1) as f64));
            *hist.entry(bucket).or_insert(0) += 1;
        }
        ordered(hist, &RATE_BUCKETS)
    });
    let by_test_count = ordered(by_test_count, &TEST_BUCKETS);
    let dates: Vec<&ReleaseDate> = tasks.iter().filter_map(|t| t.released.as_ref()).collect();
    let released = match (dates.iter().min(), dates.iter().max()) {
        (Some(&first), Some(&last)) => {
            Some(ReleaseSpan { first: first.clone(), last: last.clone(), dated: dates.len(), undated: tasks.len() - dates.len() })
        }
        _ => None,
    };
    Stats {
        tasks: tasks.len(),
        with_reference: tasks.iter().filter(|t| t.reference.is_some()).count(),
        by_source,
        by_kind,
        by_test_count,
        tests: summary(tasks.iter().map(test_count).collect()),
        prompt_chars: summary(tasks.iter().map(|t| t.prompt.as_deref().map_or(0, |p| p.chars().count())).collect()),
        pass_rate,
        released,
    }
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    #[test]
    fn counts_by_source_kind_and_tests() {
        let tasks = vec![task("a", "mbpp", "abc"), task("b", "mbpp", "abcdef"), task("c", "leetcode", "a")];
        let rates: HashMap<String, PassRate> =
            [("a".to_string(), PassRate { task_id: "a".into(), samples: 4, passed: 4 })].into_iter().collect();
        let s = stats(&tasks, Some(&rates));
        assert_eq!((s.tasks, s.by_source["mbpp"], s.by_kind["stdio"]), (3, 2, 3));
        assert_eq!(s.by_test_count, vec![("1".to_string(), 3)]);
        assert_eq!(s.prompt_chars.as_ref().map(|p| (p.min, p.median, p.max)), Some((1, 3, 6)));
        assert_eq!(s.pass_rate.unwrap(), vec![("1".to_string(), 1), ("unrated".to_string(), 2)]);
        assert!(s.released.is_none(), "no task is dated");
        let mut dated = tasks;
        dated[0].released = Some("2024-05-01".parse().unwrap());
        dated[2].released = Some("2023-11-30".parse().unwrap());
        let span = stats(&dated, None).released.unwrap();
        assert_eq!((span.first.as_str(), span.last.as_str(), span.dated, span.undated), ("2023-11-30", "2024-05-01", 2, 1));
    }
}
