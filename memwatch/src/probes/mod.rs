//! Loading the eBPF object and walking the probe ladder.

pub mod loader;
pub mod table;

use std::path::Path;

use anyhow::Context as _;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::{config::Config, tracefs::Tracefs};
pub use loader::{attach_all, HookOutcome};

/// The eBPF object built from `memwatch-ebpf` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memwatch"));

/// What the kernel offers, probed once before any program loads.
pub struct KernelSupport {
    pub tracefs: Result<Tracefs, String>,
    pub btf: Result<Btf, String>,
    pub kprobes: Result<(), String>,
}

impl KernelSupport {
    /// Probes the running kernel. Mounts tracefs when it is missing and it can.
    pub fn probe() -> Self {
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
        let kprobes = kprobe_support(tracefs.as_ref().ok());
        Self {
            tracefs,
            btf,
            kprobes,
        }
    }
}

/// kprobes attach through the kprobe PMU or, on old kernels, tracefs' kprobe_events.
fn kprobe_support(tracefs: Option<&Tracefs>) -> Result<(), String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type");
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

/// Loads the object (maps created, no program loaded yet) with the tracepoint offsets
/// of this kernel and the configured table sizes.
pub fn load_object(support: &KernelSupport, cfg: &Config) -> anyhow::Result<Ebpf> {
    let mut offsets = Vec::new();
    if let Ok(tracefs) = &support.tracefs {
        for fo in table::FIELD_OFFSETS {
            match tracefs.format(fo.category, fo.event) {
                Ok(fmt) => match fmt.field(fo.field) {
                    Some(f) => offsets.push((fo.global, f.offset)),
                    None => log::warn!(
                        "{}:{} has no field {}; programs that read it will not attach",
                        fo.category,
                        fo.event,
                        fo.field
                    ),
                },
                Err(e) => log::debug!("{e}"),
            }
        }
    }
    let mut loader = EbpfLoader::new();
    for (global, offset) in &offsets {
        log::debug!("{global} = {offset}");
        loader.override_global(global, offset, true);
    }
    let entries = cfg.tables.process_max_entries;
    loader
        .map_max_entries("PROC_FAULTS", entries)
        .map_max_entries("PROC_COW", entries);
    loader.load(OBJECT).context(
        "loading the eBPF object (creating its maps) failed: check that memwatch runs as root \
         or with CAP_BPF and CAP_PERFMON, and that RLIMIT_MEMLOCK is not too low",
    )
}
