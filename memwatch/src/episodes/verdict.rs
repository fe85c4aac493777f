//! The rules that turn a finished fork episode into a verdict: what dominated, and
//! what to change. docs/REDIS.md lists them; keep the two in step.

use super::Episode;

/// One finding: a short tag, what was seen, what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub tag: &'static str,
    /// Seconds of parent stall this finding explains (for ranking), if any.
    pub stall_seconds: f64,
    pub text: String,
}

/// Fork syscall time that starts to hurt a latency-sensitive server.
pub const FORK_SLOW_SECONDS: f64 = 0.1;
/// COW copied this share of the parent's RSS or more: writes during the save matter.
pub const COW_HIGH_RATIO: f64 = 0.3;
/// Stall in reclaim or dirty throttling worth a finding.
pub const STALL_SECONDS: f64 = 0.1;
/// A single COW fault this long is worth a finding.
pub const LONG_COW_FAULT_SECONDS: f64 = 0.01;

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The rules, each a finding or nothing for an episode (docs/REDIS.md lists them).
const RULES: &[fn(&Episode) -> Option<Finding>] = &[
    slow_fork,
    direct_reclaim,
    dirty_throttle,
    cow_heavy,
    thp_always,
    thp_cow,
    long_cow_fault,
    overcommit,
    child_failed,
];

/// Every finding for an episode, the dominant first.
pub fn findings(e: &Episode) -> Vec<Finding> {
    let mut f: Vec<Finding> = RULES.iter().filter_map(|rule| rule(e)).collect();
    f.sort_by(|a, b| b.stall_seconds.total_cmp(&a.stall_seconds));
    f
}

fn finding(tag: &'static str, stall_seconds: f64, text: String) -> Option<Finding> {
    Some(Finding {
        tag,
        stall_seconds,
        text,
    })
}

/// On 5.8 and later a write to a shared huge page splits it and copies 4 KiB.
fn thp_splits(e: &Episode) -> bool {
    e.host.kernel_version() >= (5, 8)
}

fn slow_fork(e: &Episode) -> Option<Finding> {
    if e.fork_latency_seconds < FORK_SLOW_SECONDS {
        return None;
    }
    let dup_mmap = if e.page_table_copy_seconds > 0.0 {
        format!(" (dup_mmap {:.0} ms)", e.page_table_copy_seconds * 1e3)
    } else {
        String::new()
    };
    finding(
        "slow_fork",
        e.fork_latency_seconds,
        format!(
            "fork() blocked the parent for {:.0} ms copying page tables for {:.0} MiB of \
             RSS{dup_mmap}: fork time grows with RSS; keep the instance smaller, or shard",
            e.fork_latency_seconds * 1e3,
            mib(e.parent_rss_bytes),
        ),
    )
}

fn direct_reclaim(e: &Episode) -> Option<Finding> {
    if e.reclaim_stall_seconds < STALL_SECONDS {
        return None;
    }
    finding(
        "direct_reclaim",
        e.reclaim_stall_seconds,
        format!(
            "{:.0} ms of reclaim stalled the parent: free memory could not absorb the COW \
             growth ({:.0} MiB copied); leave headroom above the COW peak (maxmemory well \
             below the limit), or raise vm.min_free_kbytes / watermark_scale_factor so \
             kswapd starts earlier",
            e.reclaim_stall_seconds * 1e3,
            mib(e.parent_cow_bytes)
        ),
    )
}

fn dirty_throttle(e: &Episode) -> Option<Finding> {
    if e.dirty_throttle_seconds < STALL_SECONDS {
        return None;
    }
    finding(
        "dirty_throttle",
        e.dirty_throttle_seconds,
        format!(
            "the parent was paused {:.0} ms by dirty throttling (balance_dirty_pages) while \
             the save wrote: lower vm.dirty_background_bytes so writeback starts sooner, or \
             put the dump and AOF on a faster disk",
            e.dirty_throttle_seconds * 1e3
        ),
    )
}

fn cow_heavy(e: &Episode) -> Option<Finding> {
    if e.parent_rss_bytes == 0 {
        return None;
    }
    let ratio = e.cow_bytes() as f64 / e.parent_rss_bytes as f64;
    if ratio < COW_HIGH_RATIO {
        return None;
    }
    finding(
        "cow_heavy",
        e.cow_fault_seconds,
        format!(
            "COW copied {:.0}% of the parent's RSS ({:.0} of {:.0} MiB) because it kept \
             writing during the {:.1} s save: budget that much extra memory, or save \
             when writes are low",
            ratio * 100.0,
            mib(e.cow_bytes()),
            mib(e.parent_rss_bytes),
            e.child_lifetime_seconds
        ),
    )
}

fn thp_always(e: &Episode) -> Option<Finding> {
    if e.host.thp_enabled != "always" {
        return None;
    }
    let (major, minor) = e.host.kernel_version();
    let text = if thp_splits(e) {
        format!(
            "THP is `always`: on this kernel ({major}.{minor}, 5.8 or later) a write to a \
             shared huge page splits it and copies 4 KiB, so COW is not 2 MiB per write, \
             but THP still adds compaction stalls and memory bloat; Redis recommends \
             `never`"
        )
    } else {
        format!(
            "THP is `always`: on this kernel ({major}.{minor}, before 5.8) every COW of a \
             huge page copies 2 MiB; set transparent_hugepage to `never` (Redis's advice)"
        )
    };
    finding("thp_always", 0.0, text)
}

fn thp_cow(e: &Episode) -> Option<Finding> {
    if e.thp_cow_faults == 0 || thp_splits(e) {
        return None;
    }
    finding(
        "thp_cow",
        0.0,
        format!(
            "{} COW faults hit transparent huge pages (2 MiB each on this kernel)",
            e.thp_cow_faults
        ),
    )
}

fn long_cow_fault(e: &Episode) -> Option<Finding> {
    if e.longest_cow_fault_seconds < LONG_COW_FAULT_SECONDS {
        return None;
    }
    finding(
        "long_cow_fault",
        e.longest_cow_fault_seconds,
        format!(
            "the longest single COW fault took {:.1} ms (the copy waited for memory)",
            e.longest_cow_fault_seconds * 1e3
        ),
    )
}

fn overcommit(e: &Episode) -> Option<Finding> {
    if e.host.overcommit_memory != 0 {
        return None;
    }
    finding(
        "overcommit",
        0.0,
        "vm.overcommit_memory=0: a fork of a large instance can fail with ENOMEM when \
         free memory looks short; Redis recommends vm.overcommit_memory=1"
            .into(),
    )
}

fn child_failed(e: &Episode) -> Option<Finding> {
    let code = e.child_exit_code.filter(|&c| c != 0)?;
    finding(
        "child_failed",
        f64::INFINITY,
        format!("the child exited with status {code:#x}: the save failed (check the server log)"),
    )
}

/// One line: the dominant cause, or that nothing stood out.
pub fn verdict(e: &Episode, findings: &[Finding]) -> String {
    match findings.first() {
        Some(top) if top.stall_seconds > 0.0 => format!("{}: {}", top.tag, top.text),
        _ => format!(
            "healthy: fork {:.1} ms, COW {:.1} MiB, no reclaim or throttling stall",
            e.fork_latency_seconds * 1e3,
            mib(e.cow_bytes())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_rank_by_stall_and_the_healthy_verdict_needs_none() {
        let mut e = Episode {
            fork_latency_seconds: 0.2,
            reclaim_stall_seconds: 0.5,
            dirty_throttle_seconds: 0.05,
            parent_rss_bytes: 100 << 20,
            parent_cow_bytes: 40 << 20,
            cow_fault_seconds: 0.01,
            ..Default::default()
        };
        e.host.kernel = "6.1.0-26-amd64".into();
        e.host.overcommit_memory = 1;
        let tags: Vec<_> = findings(&e).iter().map(|f| f.tag).collect();
        assert_eq!(tags, ["direct_reclaim", "slow_fork", "cow_heavy"]);
        assert!(verdict(&e, &findings(&e)).starts_with("direct_reclaim: 500 ms of reclaim"));
        e.child_exit_code = Some(9);
        assert_eq!(findings(&e)[0].tag, "child_failed");
        let quiet = Episode {
            host: e.host.clone(),
            ..Default::default()
        };
        assert!(findings(&quiet).is_empty());
        assert!(verdict(&quiet, &[]).starts_with("healthy: fork 0.0 ms"));
    }
}
