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

/// Every finding for an episode, the dominant first.
pub fn findings(e: &Episode) -> Vec<Finding> {
    let mut f = Vec::new();
    let ctx = &e.host;
    let (major, minor) = ctx.kernel_version();
    let thp_splits = (major, minor) >= (5, 8);

    if e.fork_latency_seconds >= FORK_SLOW_SECONDS {
        f.push(Finding {
            tag: "slow_fork",
            stall_seconds: e.fork_latency_seconds,
            text: format!(
                "fork() blocked the parent for {:.0} ms copying page tables for {:.0} MiB of \
                 RSS{}: fork time grows with RSS; keep the instance smaller, or shard",
                e.fork_latency_seconds * 1e3,
                mib(e.parent_rss_bytes),
                if e.page_table_copy_seconds > 0.0 {
                    format!(" (dup_mmap {:.0} ms)", e.page_table_copy_seconds * 1e3)
                } else {
                    String::new()
                }
            ),
        });
    }
    if e.reclaim_stall_seconds >= STALL_SECONDS {
        f.push(Finding {
            tag: "direct_reclaim",
            stall_seconds: e.reclaim_stall_seconds,
            text: format!(
                "{:.0} ms of reclaim stalled the parent: free memory could not absorb the COW \
                 growth ({:.0} MiB copied); leave headroom above the COW peak (maxmemory well \
                 below the limit), or raise vm.min_free_kbytes / watermark_scale_factor so \
                 kswapd starts earlier",
                e.reclaim_stall_seconds * 1e3,
                mib(e.parent_cow_bytes)
            ),
        });
    }
    if e.dirty_throttle_seconds >= STALL_SECONDS {
        f.push(Finding {
            tag: "dirty_throttle",
            stall_seconds: e.dirty_throttle_seconds,
            text: format!(
                "the parent was paused {:.0} ms by dirty throttling (balance_dirty_pages) while \
                 the save wrote: lower vm.dirty_background_bytes so writeback starts sooner, or \
                 put the dump and AOF on a faster disk",
                e.dirty_throttle_seconds * 1e3
            ),
        });
    }
    if e.parent_rss_bytes > 0 {
        let ratio = e.cow_bytes() as f64 / e.parent_rss_bytes as f64;
        if ratio >= COW_HIGH_RATIO {
            f.push(Finding {
                tag: "cow_heavy",
                stall_seconds: e.cow_fault_seconds,
                text: format!(
                    "COW copied {:.0}% of the parent's RSS ({:.0} of {:.0} MiB) because it kept \
                     writing during the {:.1} s save: budget that much extra memory, or save \
                     when writes are low",
                    ratio * 100.0,
                    mib(e.cow_bytes()),
                    mib(e.parent_rss_bytes),
                    e.child_lifetime_seconds
                ),
            });
        }
    }
    if ctx.thp_enabled == "always" {
        f.push(Finding {
            tag: "thp_always",
            stall_seconds: 0.0,
            text: if thp_splits {
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
            },
        });
    }
    if e.thp_cow_faults > 0 && !thp_splits {
        f.push(Finding {
            tag: "thp_cow",
            stall_seconds: 0.0,
            text: format!(
                "{} COW faults hit transparent huge pages (2 MiB each on this kernel)",
                e.thp_cow_faults
            ),
        });
    }
    if e.longest_cow_fault_seconds >= LONG_COW_FAULT_SECONDS {
        f.push(Finding {
            tag: "long_cow_fault",
            stall_seconds: e.longest_cow_fault_seconds,
            text: format!(
                "the longest single COW fault took {:.1} ms (the copy waited for memory)",
                e.longest_cow_fault_seconds * 1e3
            ),
        });
    }
    if ctx.overcommit_memory == 0 {
        f.push(Finding {
            tag: "overcommit",
            stall_seconds: 0.0,
            text: "vm.overcommit_memory=0: a fork of a large instance can fail with ENOMEM when \
                   free memory looks short; Redis recommends vm.overcommit_memory=1"
                .into(),
        });
    }
    if e.child_exit_code.is_some_and(|c| c != 0) {
        f.push(Finding {
            tag: "child_failed",
            stall_seconds: f64::INFINITY,
            text: format!(
                "the child exited with status {:#x}: the save failed (check the server log)",
                e.child_exit_code.unwrap_or(0)
            ),
        });
    }
    f.sort_by(|a, b| b.stall_seconds.total_cmp(&a.stall_seconds));
    f
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
