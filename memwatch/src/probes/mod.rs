//! Loading the eBPF object and walking the probe ladder. One module per probe area
//! (`faults`, `cow`, `fork`, `writeback`, `reclaim`, `lru`, as in
//! `memwatch-ebpf/src/probes/`) holds its hooks and the metrics they feed; `table`
//! joins them.

pub mod catalogue;
pub mod cow;
pub mod faults;
pub mod fork;
pub mod loader;
pub mod lru;
pub mod reclaim;
pub mod table;
pub mod writeback;

#[cfg(test)]
mod object_tests;

use anyhow::Context as _;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::{config::Config, host::Host, tracefs::Tracefs};
pub use loader::{attach_all, HookOutcome};

/// The eBPF object built from `memwatch-ebpf` by build.rs.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memwatch"));

/// The maps the agent takes from the object by name.
pub mod maps {
    pub const GLOBALS: &str = "GLOBALS";
    pub const STATS: &str = "STATS";
    pub const HISTS: &str = "HISTS";
    pub const NODES: &str = "NODES";
    pub const PROCS: &str = "PROCS";
    pub const PROC_CACHE: &str = "PROC_CACHE";
    pub const READING: &str = "READING";
    pub const KEYED_HISTS: &str = "KEYED_HISTS";
    pub const DEVICES: &str = "DEVICES";
    /// The fork/exit ring buffer (`daemon::start_episodes`).
    pub const EVENTS: &str = "EVENTS";
    /// The in-kernel fork filter, filled at load (`fork::KernelFilter`).
    pub const WATCH_PIDS: &str = "WATCH_PIDS";
    pub const WATCH_COMMS: &str = "WATCH_COMMS";
    /// The children whose exits are streamed (kernel-side only).
    pub const CHILDREN: &str = "CHILDREN";
    pub const FORK_UNSENT: &str = "FORK_UNSENT";
    /// Every map the agent takes (checked against the object in `object_tests`; the
    /// lifecycle tests look for them left loaded after a stop).
    pub const ALL: &[&str] = &[
        GLOBALS,
        STATS,
        HISTS,
        NODES,
        PROCS,
        PROC_CACHE,
        READING,
        KEYED_HISTS,
        DEVICES,
        EVENTS,
        WATCH_PIDS,
        WATCH_COMMS,
        CHILDREN,
        FORK_UNSENT,
    ];
}

/// A program global the agent sets at load time, and its size in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub name: &'static str,
    #[cfg_attr(not(test), allow(dead_code))]
    pub size: usize,
}

impl Global {
    const fn u32(name: &'static str) -> Self {
        Self { name, size: 4 }
    }
}

/// The globals `load_object` sets besides the tracepoints' field offsets (those are
/// named by the hook table, `Attach::Tracepoint::fields`).
pub mod globals {
    use super::Global;
    pub const NS_PER_JIFFY: Global = Global {
        name: "NS_PER_JIFFY",
        size: 8,
    };
    pub const FOLIO_ORDER_KNOWN: Global = Global::u32("FOLIO_ORDER_KNOWN");
    pub const FOLIO_HEAD_BIT: Global = Global::u32("FOLIO_HEAD_BIT");
    pub const FOLIO_ORDER_OFFSET: Global = Global::u32("FOLIO_ORDER_OFFSET");
    pub const PG_ACTIVE: Global = Global::u32("PG_ACTIVE");
    pub const PG_UNEVICTABLE: Global = Global::u32("PG_UNEVICTABLE");
    pub const PG_SWAPBACKED: Global = Global::u32("PG_SWAPBACKED");
    pub const BDI_PATH_KNOWN: Global = Global::u32("BDI_PATH_KNOWN");
    pub const OFF_MAPPING_HOST: Global = Global::u32("OFF_MAPPING_HOST");
    pub const OFF_INODE_SB: Global = Global::u32("OFF_INODE_SB");
    pub const OFF_SB_BDI: Global = Global::u32("OFF_SB_BDI");
    pub const OFF_BDI_DEV: Global = Global::u32("OFF_BDI_DEV");
    pub const OFF_BDI_DEV_NAME: Global = Global::u32("OFF_BDI_DEV_NAME");
    pub const TASK_EXIT_CODE_OFFSET: Global = Global::u32("TASK_EXIT_CODE_OFFSET");
    pub const WBC_NR_TO_WRITE_OFFSET: Global = Global::u32("WBC_NR_TO_WRITE_OFFSET");
    /// The in-kernel fork filter: on (1) or off, and how many comm patterns it has.
    pub const FORK_FILTER: Global = Global::u32("FORK_FILTER");
    pub const WATCH_COMM_COUNT: Global = Global::u32("WATCH_COMM_COUNT");
    /// Every one of them (checked against the object in `object_tests`).
    #[cfg(test)]
    pub const ALL: &[Global] = &[
        NS_PER_JIFFY,
        FOLIO_ORDER_KNOWN,
        FOLIO_HEAD_BIT,
        FOLIO_ORDER_OFFSET,
        PG_ACTIVE,
        PG_UNEVICTABLE,
        PG_SWAPBACKED,
        BDI_PATH_KNOWN,
        OFF_MAPPING_HOST,
        OFF_INODE_SB,
        OFF_SB_BDI,
        OFF_BDI_DEV,
        OFF_BDI_DEV_NAME,
        TASK_EXIT_CODE_OFFSET,
        WBC_NR_TO_WRITE_OFFSET,
        FORK_FILTER,
        WATCH_COMM_COUNT,
    ];
}

/// What the kernel offers, probed once before any program loads.
pub struct KernelSupport {
    pub tracefs: Result<Tracefs, String>,
    pub btf: Result<Btf, String>,
    pub kprobes: Result<(), String>,
    /// Kernel BTF as memwatch's own reader parses it: struct layouts and flag bits for
    /// the programs that read kernel objects.
    pub layouts: Result<crate::btf::Btf, String>,
}

impl KernelSupport {
    /// What the raw tracepoint programs that read kernel objects need: the page flag
    /// bits and the path from a mapping to its backing device's name.
    pub fn raw_layouts(&self) -> Result<(crate::btf::PageFlagBits, crate::btf::BdiPath), String> {
        let b = self.layouts.as_ref().map_err(Clone::clone)?;
        Ok((
            crate::btf::PageFlagBits::from_btf(b)?,
            crate::btf::BdiPath::from_btf(b)?,
        ))
    }
}

impl KernelSupport {
    /// Probes the running kernel. Mounts tracefs when it is missing and it can.
    pub fn probe(host: &Host) -> Self {
        let tracefs = match Tracefs::find_or_mount() {
            Ok((t, mounted)) => {
                if mounted {
                    log::info!("mounted tracefs at {}", t.root().display());
                }
                Ok(t)
            }
            Err(e) => Err(e.to_string()),
        };
        let btf = Btf::from_sys_fs()
            .map_err(|e| format!("no kernel BTF at /sys/kernel/btf/vmlinux ({e})"));
        let kprobes = kprobe_support(host, tracefs.as_ref().ok());
        Self {
            tracefs,
            btf,
            kprobes,
            layouts: crate::btf::Btf::from_sys_fs(),
        }
    }
}

/// kprobes attach through the kprobe PMU or, on old kernels, tracefs' kprobe_events.
fn kprobe_support(host: &Host, tracefs: Option<&Tracefs>) -> Result<(), String> {
    let pmu = host.sys("bus/event_source/devices/kprobe/type");
    let legacy = tracefs.map(|t| t.root().join("kprobe_events"));
    if pmu.exists() || legacy.as_ref().is_some_and(|p| p.exists()) {
        Ok(())
    } else {
        Err(
            "CONFIG_KPROBE_EVENTS not set: no kprobe PMU (/sys/bus/event_source/devices/kprobe) \
             and no kprobe_events in tracefs"
                .into(),
        )
    }
}

/// A tracepoint (category, name).
pub type Event = (&'static str, &'static str);
/// Field offsets for program globals: (global, offset).
pub type Offsets = Vec<(&'static str, u32)>;

/// The event a tracepoint attach point uses on this kernel (the first of its
/// alternatives that exists) and the offsets (global, offset) of the fields it reads,
/// or why it can't.
pub fn resolve_tracepoint(
    tracefs: &Tracefs,
    events: &[Event],
    fields: &[(&'static str, &'static str)],
) -> Result<(Event, Offsets), String> {
    let (category, name) = *events
        .iter()
        .find(|(c, n)| tracefs.has_event(c, n))
        .ok_or_else(|| {
            let names: Vec<_> = events.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            format!(
                "tracepoint {} does not exist on this kernel",
                names.join(" or ")
            )
        })?;
    let mut offsets = Vec::new();
    if !fields.is_empty() {
        let format = tracefs.format(category, name).map_err(|e| e.to_string())?;
        for (global, field) in fields {
            let f = field
                .split('|')
                .find_map(|alt| format.field(alt))
                .ok_or_else(|| {
                    format!("tracepoint {category}:{name} has no field {field} on this kernel")
                })?;
            offsets.push((*global, f.offset));
        }
    }
    Ok(((category, name), offsets))
}

/// The kernel's HZ: from its config where readable, else measured from the jiffies
/// counter in /proc/timer_list over 60 ms, else 250 (Debian's default).
pub fn kernel_hz(host: &Host) -> u64 {
    let release = host.kernel_release();
    if let Ok(cfg) = std::fs::read_to_string(format!("/boot/config-{release}")) {
        if let Some(hz) = cfg
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ="))
            .and_then(|v| v.trim().parse().ok())
        {
            return hz;
        }
    }
    let jiffies = || -> Option<u64> {
        let t = host.read_proc("timer_list").ok()?;
        t.lines()
            .find_map(|l| l.strip_prefix("jiffies:"))
            .and_then(|v| v.trim().parse().ok())
    };
    let t0 = std::time::Instant::now();
    if let Some(j0) = jiffies() {
        std::thread::sleep(std::time::Duration::from_millis(60));
        if let Some(j1) = jiffies() {
            let measured = (j1 - j0) as f64 / t0.elapsed().as_secs_f64();
            let hz = [100u64, 250, 300, 1000]
                .into_iter()
                .min_by(|a, b| {
                    (*a as f64 - measured)
                        .abs()
                        .total_cmp(&(*b as f64 - measured).abs())
                })
                .unwrap_or(250);
            log::debug!("kernel HZ measured at {measured:.0}, taking {hz}");
            return hz;
        }
    }
    log::warn!("cannot tell the kernel's HZ; assuming 250 for dirty-throttle pause times");
    250
}

/// The offsets (global, offset) of the record fields the table's tracepoints read, on
/// this kernel (a tracepoint that can't be resolved is left out, logged).
fn tracepoint_offsets(support: &KernelSupport) -> Offsets {
    let mut offsets: Offsets = Vec::new();
    if let Ok(tracefs) = &support.tracefs {
        for hook in table::HOOKS {
            for rung in hook.rungs {
                let nested = rung.attach.iter().flat_map(|a| match a {
                    table::Attach::FirstOf(alternatives) => *alternatives,
                    a => std::slice::from_ref(a),
                });
                for a in nested {
                    if let table::Attach::Tracepoint { events, fields, .. } = a {
                        match resolve_tracepoint(tracefs, events, fields) {
                            Ok((_, found)) => {
                                for (g, off) in found {
                                    if !offsets.iter().any(|(x, _)| *x == g) {
                                        offsets.push((g, off));
                                    }
                                }
                            }
                            Err(e) => log::debug!("{}/{}: {e}", hook.family(), hook.name()),
                        }
                    }
                }
            }
        }
    }
    offsets
}

/// Loads the object (maps created, no program loaded yet) with the tracepoint offsets
/// of this kernel and the configured table sizes.
pub fn load_object(support: &KernelSupport, cfg: &Config, host: &Host) -> anyhow::Result<Ebpf> {
    let offsets = tracepoint_offsets(support);
    let ns_per_jiffy: u64 = 1_000_000_000 / kernel_hz(host);
    let mut loader = EbpfLoader::new();
    for (global, offset) in &offsets {
        log::debug!("{global} = {offset}");
        loader.override_global(global, offset, true);
    }
    loader.override_global(globals::NS_PER_JIFFY.name, &ns_per_jiffy, true);
    // Folio sizes, so LRU and dirty-page events count pages like /proc/vmstat does.
    let btf = support.layouts.as_ref();
    let folio = btf
        .map_err(Clone::clone)
        .and_then(crate::btf::FolioLayout::from_btf);
    let folio_known: u32 = match &folio {
        Ok(l) => {
            log::debug!("folio layout: {l:?}");
            1
        }
        Err(e) => {
            log::info!("folio layout unknown ({e}); LRU events count one page per folio");
            0
        }
    };
    let (head_bit, order_offset) = folio
        .as_ref()
        .map_or((0, 0), |l| (l.head_bit, l.order_offset));
    loader.override_global(globals::FOLIO_ORDER_KNOWN.name, &folio_known, true);
    loader.override_global(globals::FOLIO_HEAD_BIT.name, &head_bit, true);
    loader.override_global(globals::FOLIO_ORDER_OFFSET.name, &order_offset, true);
    // For the raw tracepoint programs that read kernel objects (attached only when
    // these are known, see `Attach::RawTracepoint::btf`).
    let raw = support.raw_layouts();
    if let Err(e) = &raw {
        log::info!("raw LRU and dirty-page tracepoints unavailable: {e}");
    }
    let raw_globals = raw.as_ref().ok().map(|(bits, path)| {
        [
            (globals::PG_ACTIVE, bits.active),
            (globals::PG_UNEVICTABLE, bits.unevictable),
            (globals::PG_SWAPBACKED, bits.swapbacked),
            (globals::BDI_PATH_KNOWN, 1),
            (globals::OFF_MAPPING_HOST, path.mapping_host),
            (globals::OFF_INODE_SB, path.inode_sb),
            (globals::OFF_SB_BDI, path.sb_bdi),
            (globals::OFF_BDI_DEV, path.bdi_dev),
            (globals::OFF_BDI_DEV_NAME, path.bdi_dev_name),
        ]
    });
    for (global, value) in raw_globals.iter().flatten() {
        loader.override_global(global.name, value, true);
    }
    // Where a task keeps its exit status, for fork episodes.
    let exit_code_offset: u32 = btf
        .as_ref()
        .ok()
        .and_then(|b| b.member("task_struct", "exit_code"))
        .map_or(0, |(off, _)| off);
    loader.override_global(globals::TASK_EXIT_CODE_OFFSET.name, &exit_code_offset, true);
    // What do_writepages has left to write, for the pages written back.
    let nr_to_write_offset: u32 = btf
        .as_ref()
        .ok()
        .and_then(|b| b.member("writeback_control", "nr_to_write"))
        .map_or(u32::MAX, |(off, _)| off);
    loader.override_global(
        globals::WBC_NR_TO_WRITE_OFFSET.name,
        &nr_to_write_offset,
        true,
    );
    loader.map_max_entries(maps::PROCS, cfg.tables.process_max_entries);
    // Fork and exit events: filtered in the kernel to what [episodes] watches.
    let filter = fork::KernelFilter::new(&cfg.episodes);
    match &filter.off {
        Some(why) => log::info!(
            "fork events are not filtered in the kernel ({why}): every process fork and its \
             child's exit is streamed, the agent picks the watched ones"
        ),
        None => log::info!(
            "fork events filtered in the kernel: {} watched pids, {} comm patterns",
            filter.pids.len(),
            filter.comms.len()
        ),
    }
    let on = u32::from(filter.off.is_none());
    let comms = filter.comms.len() as u32;
    loader.override_global(globals::FORK_FILTER.name, &on, true);
    loader.override_global(globals::WATCH_COMM_COUNT.name, &comms, true);
    loader.map_max_entries(maps::EVENTS, cfg.episodes.ring_buffer_bytes);
    let mut ebpf = loader.load(OBJECT).context(
        "loading the eBPF object (creating its maps) failed: check that memwatch runs as root \
         or with CAP_BPF and CAP_PERFMON, and that RLIMIT_MEMLOCK is not too low",
    )?;
    fill_fork_filter(&mut ebpf, &filter, cfg.episodes.ring_buffer_bytes)?;
    Ok(ebpf)
}

/// Fills the fork filter's maps (before any program attaches), and records the ring
/// buffer's size for `memwatch_events_ring_buffer_bytes`.
fn fill_fork_filter(
    ebpf: &mut Ebpf,
    filter: &fork::KernelFilter,
    ring_bytes: u32,
) -> anyhow::Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    }
    let mut pids: aya::maps::HashMap<_, u32, u32> =
        aya::maps::HashMap::try_from(map(ebpf, maps::WATCH_PIDS)?)?;
    for pid in &filter.pids {
        pids.insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to {}", maps::WATCH_PIDS))?;
    }
    let mut comms: aya::maps::Array<_, memwatch_common::CommPattern> =
        aya::maps::Array::try_from(map(ebpf, maps::WATCH_COMMS)?)?;
    for (i, c) in filter.comms.iter().enumerate() {
        comms
            .set(i as u32, c, 0)
            .with_context(|| format!("setting {} slot {i}", maps::WATCH_COMMS))?;
    }
    let mut globals: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(map(ebpf, maps::GLOBALS)?)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut values = vec![0u64; cpus];
    if let Some(v) = values.first_mut() {
        *v = u64::from(ring_bytes);
    }
    globals.set(
        memwatch_common::global::RING_BYTES as u32,
        aya::maps::PerCpuValues::try_from(values)?,
        0,
    )?;
    Ok(())
}
