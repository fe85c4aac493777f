//! Loading the eBPF object and walking the probe ladder.

pub mod loader;
pub mod table;

use anyhow::Context as _;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::{config::Config, host::Host, tracefs::Tracefs};
pub use loader::{attach_all, HookOutcome};

/// The eBPF object built from `memwatch-ebpf` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memwatch"));

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

/// Loads the object (maps created, no program loaded yet) with the tracepoint offsets
/// of this kernel and the configured table sizes.
pub fn load_object(support: &KernelSupport, cfg: &Config, host: &Host) -> anyhow::Result<Ebpf> {
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
                            Err(e) => log::debug!("{}/{}: {e}", hook.family, hook.name),
                        }
                    }
                }
            }
        }
    }
    let ns_per_jiffy: u64 = 1_000_000_000 / kernel_hz(host);
    let mut loader = EbpfLoader::new();
    for (global, offset) in &offsets {
        log::debug!("{global} = {offset}");
        loader.override_global(global, offset, true);
    }
    loader.override_global("NS_PER_JIFFY", &ns_per_jiffy, true);
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
    loader.override_global("FOLIO_ORDER_KNOWN", &folio_known, true);
    loader.override_global("FOLIO_HEAD_BIT", &head_bit, true);
    loader.override_global("FOLIO_ORDER_OFFSET", &order_offset, true);
    // For the raw tracepoint programs that read kernel objects (attached only when
    // these are known, see `Attach::RawTracepoint::btf`).
    let raw = support.raw_layouts();
    if let Err(e) = &raw {
        log::info!("raw LRU and dirty-page tracepoints unavailable: {e}");
    }
    let raw_globals = raw.as_ref().ok().map(|(bits, path)| {
        [
            ("PG_ACTIVE", bits.active),
            ("PG_UNEVICTABLE", bits.unevictable),
            ("PG_SWAPBACKED", bits.swapbacked),
            ("BDI_PATH_KNOWN", 1),
            ("OFF_MAPPING_HOST", path.mapping_host),
            ("OFF_INODE_SB", path.inode_sb),
            ("OFF_SB_BDI", path.sb_bdi),
            ("OFF_BDI_DEV", path.bdi_dev),
            ("OFF_BDI_DEV_NAME", path.bdi_dev_name),
        ]
    });
    for (name, value) in raw_globals.iter().flatten() {
        loader.override_global(name, value, true);
    }
    // Where a task keeps its exit status, for fork episodes.
    let exit_code_offset: u32 = btf
        .as_ref()
        .ok()
        .and_then(|b| b.member("task_struct", "exit_code"))
        .map_or(0, |(off, _)| off);
    loader.override_global("TASK_EXIT_CODE_OFFSET", &exit_code_offset, true);
    // What do_writepages has left to write, for the pages written back.
    let nr_to_write_offset: u32 = btf
        .as_ref()
        .ok()
        .and_then(|b| b.member("writeback_control", "nr_to_write"))
        .map_or(u32::MAX, |(off, _)| off);
    loader.override_global("WBC_NR_TO_WRITE_OFFSET", &nr_to_write_offset, true);
    loader.map_max_entries("PROCS", cfg.tables.process_max_entries);
    loader.load(OBJECT).context(
        "loading the eBPF object (creating its maps) failed: check that memwatch runs as root \
         or with CAP_BPF and CAP_PERFMON, and that RLIMIT_MEMLOCK is not too low",
    )
}
