//! `memwatch fork-report`: episodes as a person reads them.

use std::fmt::Write as _;

use super::Episode;

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

/// A process name as the report prints it: control characters (a newline, a
/// terminal escape) spelled out, so a name can neither forge report lines nor drive
/// the reader's terminal.
pub fn printable(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// A readable report of one episode.
pub fn render(e: &Episode) -> String {
    let mut s = String::new();
    let state = if e.active { " (still running)" } else { "" };
    let _ = writeln!(
        s,
        "Fork episode {} — {} (pid {}) forked {} at {}{state}",
        e.id,
        printable(&e.comm),
        e.pid,
        e.child_pid,
        e.started_at
    );
    let _ = writeln!(s, "  verdict: {}", e.verdict);
    let _ = writeln!(
        s,
        "  fork:    {} in the fork syscall{}; parent RSS {} ({} anonymous)",
        ms(e.fork_latency_seconds),
        if e.page_table_copy_seconds > 0.0 {
            format!(", {} copying page tables", ms(e.page_table_copy_seconds))
        } else {
            String::new()
        },
        mib(e.parent_rss_bytes),
        mib(e.parent_anon_bytes)
    );
    cow_lines(&mut s, e);
    let _ = writeln!(
        s,
        "  stalls:  {} in reclaim, {} dirty-throttled",
        ms(e.reclaim_stall_seconds),
        ms(e.dirty_throttle_seconds)
    );
    let _ = writeln!(
        s,
        "  child:   lived {:.2} s, {}",
        e.child_lifetime_seconds,
        exit_status(e)
    );
    host_line(&mut s, &e.host);
    if !e.findings.is_empty() {
        let _ = writeln!(s, "  what to change:");
        for f in &e.findings {
            let _ = writeln!(s, "    - {f}");
        }
    }
    s
}

/// What the parent and the child copied on write.
fn cow_lines(s: &mut String, e: &Episode) {
    let ratio = if e.parent_rss_bytes > 0 {
        format!(
            " = {:.0}% of RSS",
            e.cow_bytes() as f64 * 100.0 / e.parent_rss_bytes as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  COW:     parent {} ({} pages), child {}; total {}{ratio}; peak {}/s; counted as {}",
        mib(e.parent_cow_bytes),
        e.parent_cow_pages,
        mib(e.child_cow_bytes),
        mib(e.cow_bytes()),
        mib(e.peak_cow_bytes_per_second as u64),
        e.cow_source
    );
    if e.cow_fault_seconds > 0.0 || e.thp_cow_faults > 0 {
        let _ = writeln!(
            s,
            "           {} in COW faults, longest {}, {} THP COW faults",
            ms(e.cow_fault_seconds),
            ms(e.longest_cow_fault_seconds),
            e.thp_cow_faults
        );
    }
}

/// How the child ended.
fn exit_status(e: &Episode) -> String {
    match e.child_exit_code {
        _ if e.active => "still running".to_string(),
        Some(0) => "exited 0".to_string(),
        Some(c) if c & 0x7f != 0 => format!("killed by signal {}", c & 0x7f),
        Some(c) => format!("exited {}", c >> 8),
        None => "exit status unknown".to_string(),
    }
}

/// The host's settings and room at the fork.
fn host_line(s: &mut String, h: &super::context::HostContext) {
    let _ = writeln!(
        s,
        "  host:    kernel {}, THP {} (defrag {}), overcommit_memory={}, swap {} of {} free, \
         {} available; free {} pages vs low/high watermarks {}/{}",
        h.kernel,
        h.thp_enabled,
        h.thp_defrag,
        h.overcommit_memory,
        mib(h.swap_free_bytes),
        mib(h.swap_total_bytes),
        mib(h.mem_available_bytes),
        h.free_pages,
        h.low_watermark_pages,
        h.high_watermark_pages
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_forge_lines_or_drive_the_terminal() {
        assert_eq!(printable("redis-server"), "redis-server");
        assert_eq!(printable("a\"b {x} \\"), "a\"b {x} \\");
        assert_eq!(printable("new\nline"), "new\\nline");
        assert_eq!(printable("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(printable("bad\u{fffd}"), "bad\u{fffd}");
        let e = Episode {
            comm: "x\n  verdict: fine".into(),
            ..Default::default()
        };
        let text = render(&e);
        assert_eq!(text.matches("verdict:").count(), 2, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("  verdict:")).count(),
            1
        );
    }
}
