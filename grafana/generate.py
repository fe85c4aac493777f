#!/usr/bin/env python3
"""Writes grafana/dashboards/*.json. The JSON files are committed; edit this and rerun
(`python3 grafana/generate.py`) rather than editing them by hand. Standard library only.

memwatch/tests/dashboards.rs checks the output's structure and evaluates every query
against a live Prometheus scraping memwatch."""

import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'
P = I + ', comm=~"$comm"'
C = I + ', cgroup=~"$cgroup"'
RI = "$__rate_interval"


def target(expr, legend="", fmt=None, instant=False, ref="A"):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if fmt:
        t["format"] = fmt
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


class Board:
    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def newline(self):
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title):
        self.newline()
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, kind, title, desc, targets, w=12, h=8, unit="short", extra=None):
        if self.x + w > 24:
            self.newline()
        refs = "ABCDEFGH"
        for i, t in enumerate(targets):
            t["refId"] = refs[i]
        p = {"type": kind, "title": title, "description": desc, "id": self.next_id, "datasource": DS,
             "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h}, "targets": targets,
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
        if kind == "heatmap":
            p["options"] = {"calculate": False, "yAxis": {"unit": unit},
                            "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges"}}
            p["fieldConfig"] = {"defaults": {}, "overrides": []}
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        if extra:
            p.update(extra)
        self.panels.append(p)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return p


def heat(expr):
    return [target(expr, "{{le}}", fmt="heatmap")]


def var_query(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": multi, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0}


def templating(extra_vars):
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": ""},
        var_query("instance", "Instance", "label_values(memwatch_build_info, instance)"),
    ] + extra_vars}


def dashboard(uid, title, desc, board, extra_vars, tags):
    return {"uid": uid, "title": title, "description": desc, "tags": tags, "timezone": "",
            "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
            "templating": templating(extra_vars), "annotations": {"list": []},
            "links": [], "panels": board.panels}


def host():
    b = Board()
    b.row("Copy-on-write and page faults")
    b.panel("timeseries", "COW: write-protect faults by process",
            "Write-protect faults per second (every COW copy or reuse), top 10 processes. Every rung.",
            [target(f'topk(10, sum by (comm) (rate(memwatch_process_wp_faults_total{{{P}}}[{RI}])))', "{{comm}}")], unit="ops")
    b.panel("timeseries", "COW copies and reuses by process",
            "Pages copied on write and write faults resolved without a copy. Needs the fentry or kprobe rung for do_wp_page.",
            [target(f'topk(10, sum by (comm) (rate(memwatch_process_cow_copies_total{{{P}}}[{RI}])))', "{{comm}} copies"),
             target(f'topk(10, sum by (comm) (rate(memwatch_process_cow_reuses_total{{{P}}}[{RI}])))', "{{comm}} reuses")], unit="ops")
    b.panel("timeseries", "Page faults by kind",
            "Host-wide faults per second, decoded from the x86 error code (write_protect is the COW case).",
            [target(f'sum by (kind, mode) (rate(memwatch_page_faults_total{{{I}}}[{RI}]))', "{{kind}} ({{mode}})")], unit="ops")
    b.panel("timeseries", "Faults handled: major and minor",
            "Faults completed, by major (I/O) and minor. Needs the fexit or kretprobe rung for handle_mm_fault.",
            [target(f'sum by (type) (rate(memwatch_process_faults_handled_total{{{P}}}[{RI}]))', "{{type}}")], unit="ops")
    b.panel("timeseries", "Page faults by cgroup",
            "Faults per second per cgroup and kind.",
            [target(f'topk(10, sum by (cgroup, kind) (rate(memwatch_cgroup_page_faults_total{{{C}}}[{RI}])))', "{{cgroup}} {{kind}}")], unit="ops")
    b.panel("timeseries", "COW copied bytes",
            "Bytes copied on write, host-wide. Needs the fentry or kprobe rung.",
            [target(f'sum(rate(memwatch_cow_copied_bytes_total{{{I}}}[{RI}]))', "copied")], w=6, unit="Bps")
    b.panel("heatmap", "Write-protect fault latency",
            "Time handling write-protect faults (copies included). Needs the fentry or kprobe rung.",
            heat(f'sum by (le) (rate(memwatch_wp_fault_duration_seconds_bucket{{{I}}}[{RI}]))'), w=6, unit="s")

    b.row("Fork")
    b.panel("heatmap", "Fork latency",
            "fork() syscall time, entry to the parent's return, for the selected processes.",
            heat(f'sum by (le) (rate(memwatch_fork_duration_seconds_bucket{{{P}}}[{RI}]))'), w=8, unit="s")
    b.panel("timeseries", "Fork latency p99 by process",
            "99th percentile of fork() time per command name.",
            [target(f'histogram_quantile(0.99, sum by (comm, le) (rate(memwatch_fork_duration_seconds_bucket{{{P}}}[{RI}])))', "{{comm}}")], w=8, unit="s")
    b.panel("timeseries", "Forks by process",
            "Successful fork, vfork and thread-creating clone calls per second.",
            [target(f'topk(10, sum by (comm, kind) (rate(memwatch_process_forks_total{{{P}}}[{RI}])))', "{{comm}} {{kind}}")], w=8, unit="ops")
    b.panel("heatmap", "Page-table copy (dup_mmap) latency",
            "Time copying the address space during fork. Needs the fentry or kprobe rung for dup_mmap.",
            heat(f'sum by (le) (rate(memwatch_dup_mmap_duration_seconds_bucket{{{I}}}[{RI}]))'), w=24, h=6, unit="s")

    b.row("Dirty pages and writeback")
    b.panel("timeseries", "Dirty and writeback pages against thresholds",
            "nr_dirty and nr_writeback with the background threshold (writeback starts) and the dirty threshold (writers are throttled between the two).",
            [target(f'memwatch_vmstat_nr_dirty{{{I}}}', "dirty {{instance}}"),
             target(f'memwatch_vmstat_nr_writeback{{{I}}}', "writeback {{instance}}"),
             target(f'memwatch_vmstat_nr_dirty_background_threshold{{{I}}}', "background threshold {{instance}}"),
             target(f'memwatch_vmstat_nr_dirty_threshold{{{I}}}', "dirty threshold {{instance}}")], unit="short")
    b.panel("timeseries", "Writeback by reason",
            "Pages written by the flusher per reason (background, periodic, sync, vmscan, ...) and device.",
            [target(f'sum by (reason, device) (rate(memwatch_writeback_written_pages_total{{{I}}}[{RI}]))', "{{reason}} {{device}}")], unit="ops")
    b.panel("timeseries", "Pages dirtied by process",
            "Page-cache pages dirtied per second, top 10 processes.",
            [target(f'topk(10, sum by (comm) (rate(memwatch_process_dirtied_pages_total{{{P}}}[{RI}])))', "{{comm}}")], w=8, unit="ops")
    b.panel("timeseries", "Dirty-throttle stalls by process",
            "Seconds per second the processes slept in balance_dirty_pages.",
            [target(f'topk(10, sum by (comm) (rate(memwatch_process_dirty_throttle_seconds_total{{{P}}}[{RI}])))', "{{comm}}")], w=8, unit="s")
    b.panel("timeseries", "Dirty-throttle stalls by cgroup",
            "Seconds per second the cgroup's processes slept in balance_dirty_pages.",
            [target(f'topk(10, sum by (cgroup) (rate(memwatch_cgroup_dirty_throttle_seconds_total{{{C}}}[{RI}])))', "{{cgroup}}")], w=8, unit="s")

    b.row("Reclaim and LRU")
    b.panel("heatmap", "Direct reclaim latency",
            "Direct reclaim episodes (host short of memory) by duration.",
            heat(f'sum by (le) (rate(memwatch_direct_reclaim_duration_seconds_bucket{{{I}}}[{RI}]))'), w=8, unit="s")
    b.panel("heatmap", "Memcg reclaim latency",
            "Memory-cgroup limit reclaim episodes by duration.",
            heat(f'sum by (le) (rate(memwatch_memcg_reclaim_duration_seconds_bucket{{{I}}}[{RI}]))'), w=8, unit="s")
    b.panel("timeseries", "kswapd",
            "kswapd wake-ups per node, and pages kswapd scanned and stole (/proc/vmstat).",
            [target(f'sum by (node) (rate(memwatch_kswapd_wakeups_total{{{I}}}[{RI}]))', "wake-ups node {{node}}"),
             target(f'sum(rate(memwatch_vmstat_pgscan_kswapd_total{{{I}}}[{RI}]))', "pages scanned"),
             target(f'sum(rate(memwatch_vmstat_pgsteal_kswapd_total{{{I}}}[{RI}]))', "pages stolen")], w=8, unit="ops")
    b.panel("timeseries", "Reclaim stalls by process",
            "Seconds per second processes stalled in direct and memcg reclaim.",
            [target(f'topk(10, sum by (comm, type) (rate(memwatch_process_reclaim_seconds_total{{{P}}}[{RI}])))', "{{comm}} {{type}}")], unit="s")
    b.panel("timeseries", "Reclaim stalls by cgroup",
            "Seconds per second the cgroup's processes stalled in direct and memcg reclaim.",
            [target(f'topk(10, sum by (cgroup, type) (rate(memwatch_cgroup_reclaim_seconds_total{{{C}}}[{RI}])))', "{{cgroup}} {{type}}")], unit="s")
    b.panel("timeseries", "LRU flows per list",
            "Pages added to each LRU list, activated on access, and deactivated by reclaim.",
            [target(f'sum by (list) (rate(memwatch_lru_insertions_total{{{I}}}[{RI}]))', "insert {{list}}"),
             target(f'sum(rate(memwatch_lru_activations_total{{{I}}}[{RI}]))', "activate (access)"),
             target(f'sum(rate(memwatch_vmscan_inactive_activated_pages_total{{{I}}}[{RI}]))', "activate (reclaim scan)"),
             target(f'sum(rate(memwatch_vmscan_deactivated_pages_total{{{I}}}[{RI}]))', "deactivate")], w=8, unit="ops")
    b.panel("timeseries", "Inactive-list scan",
            "Pages scanned and reclaimed on the inactive lists, and dirty/writeback pages the scan met.",
            [target(f'sum(rate(memwatch_vmscan_inactive_scanned_pages_total{{{I}}}[{RI}]))', "scanned"),
             target(f'sum(rate(memwatch_vmscan_inactive_reclaimed_pages_total{{{I}}}[{RI}]))', "reclaimed"),
             target(f'sum(rate(memwatch_vmscan_inactive_dirty_pages_total{{{I}}}[{RI}]))', "dirty met"),
             target(f'sum(rate(memwatch_vmscan_inactive_writeback_pages_total{{{I}}}[{RI}]))', "writeback met")], w=8, unit="ops")
    b.panel("timeseries", "Reclaim throttling",
            "Seconds per second reclaim was throttled, by reason.",
            [target(f'sum by (reason) (rate(memwatch_vmscan_throttled_seconds_total{{{I}}}[{RI}]))', "{{reason}}")], w=8, unit="s")

    b.row("Zones")
    b.panel("timeseries", "Zone free pages against watermarks",
            "Free pages per zone with its min, low and high watermarks: kswapd wakes below low, allocations reclaim directly below min.",
            [target(f'memwatch_zoneinfo_free_pages{{{I}}} and on (instance, node, zone) (memwatch_zoneinfo_managed_pages{{{I}}} > 0)', "free {{node}}/{{zone}}"),
             target(f'memwatch_zoneinfo_watermark_pages{{{I}, watermark=~"min|low|high"}} and on (instance, node, zone) (memwatch_zoneinfo_managed_pages{{{I}}} > 0)', "{{watermark}} {{node}}/{{zone}}")], w=16, unit="short")
    b.panel("timeseries", "Zone headroom",
            "Free pages minus the high watermark: negative means kswapd is working.",
            [target(f'memwatch_zoneinfo_headroom_pages{{{I}}}', "{{node}}/{{zone}}")], w=8, unit="short")

    b.row("Pressure (PSI)")
    b.panel("timeseries", "Pressure stall share (avg10)",
            "Share of wall time some/all tasks were stalled on memory and I/O (kernel PSI avg10). Absent without PSI (psi=1 on Debian kernels).",
            [target(f'memwatch_pressure_stall_ratio{{{I}, window="10s"}}', "{{resource}} {{kind}}")], unit="percentunit")
    b.panel("timeseries", "Pressure stall time",
            "Seconds per second stalled (PSI total=).",
            [target(f'sum by (resource, kind) (rate(memwatch_pressure_stall_seconds_total{{{I}}}[{RI}]))', "{{resource}} {{kind}}")], unit="s")

    b.row("memwatch")
    b.panel("table", "Probe rungs",
            "The rung each hook runs on (fentry, kprobe, tracepoint or none), and whether it is below its best.",
            [target(f'max by (family, hook, mode) (memwatch_probe_info{{{I}}})', "", fmt="table", instant=True)], w=12, h=10)
    b.panel("timeseries", "Collector duration",
            "Time each collector took per scrape; failures show in the alert MemwatchCollectorFailed.",
            [target(f'max by (collector) (memwatch_scrape_collector_duration_seconds{{{I}}})', "{{collector}}")], w=12, h=5, unit="s")
    b.panel("timeseries", "Process table fill and lost rows",
            "In-kernel table rows against capacity; evictions and insert errors mean attribution is lost to 'other'.",
            [target(f'max by (table) (memwatch_table_entries{{{I}}}) / max by (table) (memwatch_table_max_entries{{{I}}})', "fill {{table}}"),
             target(f'sum by (table) (rate(memwatch_table_evictions_total{{{I}}}[{RI}]))', "evictions/s {{table}}"),
             target(f'sum by (table) (rate(memwatch_table_insert_errors_total{{{I}}}[{RI}]))', "insert errors/s {{table}}")], w=12, h=5, unit="short")
    return dashboard("memwatch-host", "memwatch: host memory",
                     "Where the host's memory work goes: COW, faults, fork, dirty pages and writeback, reclaim, LRU, zones, PSI.",
                     b, [var_query("comm", "Process", f'label_values(memwatch_process_page_faults_total{{{I}}}, comm)'),
                         var_query("cgroup", "Cgroup", f'label_values(memwatch_cgroup_page_faults_total{{{I}}}, cgroup)')],
                     ["memwatch", "memory"])


def redis():
    b = Board()
    W = I + ', comm=~"$comm"'
    b.row("Episodes")
    b.panel("timeseries", "Fork episodes",
            "Finished fork episodes (fork to the child's exit) per hour of the watched processes (BGSAVE, AOF rewrite).",
            [target(f'sum by (comm) (increase(memwatch_fork_episodes_total{{{W}}}[1h]))', "{{comm}}")], w=8, unit="short")
    b.panel("stat", "Last episode: COW share of RSS",
            "COW (parent + child) of the last episode over the parent's RSS at the fork. memwatch's cow_heavy verdict fires at 30%.",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="cow_ratio"}})', "{{comm}}", instant=True)], w=4, unit="percentunit",
            extra={"fieldConfig": {"defaults": {"unit": "percentunit", "thresholds": {"mode": "absolute", "steps": [
                {"color": "green", "value": None}, {"color": "orange", "value": 0.3}, {"color": "red", "value": 0.6}]}}, "overrides": []}})
    b.panel("stat", "Last episode: fork latency",
            "fork() syscall time of the last episode.",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="fork_seconds"}})', "{{comm}}", instant=True)], w=4, unit="s")
    b.panel("stat", "Last episode: child lifetime",
            "Fork to the child's exit (how long the save ran).",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="child_lifetime_seconds"}})', "{{comm}}", instant=True)], w=4, unit="s")
    b.panel("stat", "Last episode: parent RSS",
            "The parent's RSS at the fork.",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="parent_rss_bytes"}})', "{{comm}}", instant=True)], w=4, unit="bytes")

    b.row("Copy-on-write")
    b.panel("timeseries", "COW bytes per episode",
            "COW bytes (parent + child) of each episode: the last episode's figure, and the mean over the window.",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="cow_bytes"}})', "last {{comm}}"),
             target(f'sum by (comm) (rate(memwatch_fork_episode_cow_bytes_sum{{{W}}}[1h])) / sum by (comm) (rate(memwatch_fork_episode_cow_bytes_count{{{W}}}[1h]))', "mean {{comm}}")], unit="bytes")
    b.panel("heatmap", "COW bytes per episode (distribution)",
            "Episodes by COW bytes.",
            heat(f'sum by (le) (increase(memwatch_fork_episode_cow_bytes_bucket{{{W}}}[{RI}]))'), unit="bytes")
    b.panel("timeseries", "Live COW of running episodes",
            "COW bytes the parent has copied so far while the child runs (sampled every 100 ms).",
            [target(f'max by (comm, pid, child_pid) (memwatch_fork_episode_active_cow_bytes{{{W}}})', "{{comm}} {{pid}} -> {{child_pid}}")], unit="bytes")
    b.panel("timeseries", "COW rate of the watched processes",
            "Write-protect faults per second (every rung) of the watched processes: each is a COW copy while a child shares their memory.",
            [target(f'sum by (comm, pid) (rate(memwatch_process_wp_faults_total{{{W}}}[{RI}]))', "{{comm}} {{pid}}")], unit="ops")
    b.panel("timeseries", "Private and shared dirty memory",
            "smaps_rollup of the watched processes: after a fork, private_dirty growing while shared_dirty shrinks is COW at work.",
            [target(f'sum by (comm, pid) (memwatch_process_smaps_private_dirty_bytes{{{W}}})', "private {{comm}} {{pid}}"),
             target(f'sum by (comm, pid) (memwatch_process_smaps_shared_dirty_bytes{{{W}}})', "shared {{comm}} {{pid}}")], w=24, unit="bytes")

    b.row("Stalls and fork latency")
    b.panel("timeseries", "Stall breakdown",
            "Parent stall during episodes by cause (reclaim, dirty throttling), per hour, and the last episode's figures.",
            [target(f'sum by (comm, cause) (increase(memwatch_fork_episode_stall_seconds_sum{{{W}}}[1h]))', "{{comm}} {{cause}} per hour"),
             target(f'max by (comm, figure) (memwatch_fork_episode_last{{{W}, figure=~"reclaim_stall_seconds|dirty_throttle_seconds"}})', "last {{comm}} {{figure}}")], unit="s")
    b.panel("timeseries", "Fork latency per episode",
            "The last episode's fork latency, and the p99 of the watched processes' forks.",
            [target(f'max by (comm) (memwatch_fork_episode_last{{{W}, figure="fork_seconds"}})', "last episode {{comm}}"),
             target(f'histogram_quantile(0.99, sum by (comm, le) (rate(memwatch_fork_duration_seconds_bucket{{{W}}}[{RI}])))', "p99 all forks {{comm}}")], unit="s")
    b.panel("timeseries", "Reclaim stalls of the cgroups",
            "Seconds per second the selected cgroups' processes stalled in direct and memcg reclaim: a Redis container at its memory limit during a save shows here.",
            [target(f'topk(10, sum by (cgroup, type) (rate(memwatch_cgroup_reclaim_seconds_total{{{C}}}[{RI}])))', "{{cgroup}} {{type}}")], unit="s")
    b.panel("heatmap", "Fork latency (episodes)",
            "Fork latency of the episodes.",
            heat(f'sum by (le) (increase(memwatch_fork_episode_fork_seconds_bucket{{{W}}}[{RI}]))'), unit="s")
    return dashboard("memwatch-redis-fork", "memwatch: Redis fork episodes",
                     "Fork episodes of watched processes (default redis-server): COW per episode, stalls, fork latency. See docs/REDIS.md.",
                     b, [var_query("comm", "Process", f'label_values(memwatch_fork_episode_last{{{I}}}, comm)'),
                         var_query("cgroup", "Cgroup", f'label_values(memwatch_cgroup_page_faults_total{{{I}}}, cgroup)')],
                     ["memwatch", "redis"])


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    for name, d in (("memwatch-host.json", host()), ("memwatch-redis-fork.json", redis())):
        with open(os.path.join(out, name), "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
