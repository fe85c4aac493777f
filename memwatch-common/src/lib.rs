//! Types shared by the eBPF programs (`memwatch-ebpf`) and the agent (`memwatch`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout byte for byte. Flags are `u32`, never `bool`.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Page-fault classification, decoded from the x86 page-fault error code that the
/// `exceptions:page_fault_user` / `page_fault_kernel` tracepoints carry.
pub mod fault {
    /// Error-code bit 0: the page was present (a protection fault, not a missing page).
    pub const PF_PROT: u64 = 1 << 0;
    /// Error-code bit 1: the access was a write.
    pub const PF_WRITE: u64 = 1 << 1;
    /// Error-code bit 2: the access came from user mode.
    pub const PF_USER: u64 = 1 << 2;
    /// Error-code bit 4: the access was an instruction fetch.
    pub const PF_INSTR: u64 = 1 << 4;

    /// Write to a present page: the write-protect fault behind every copy-on-write.
    pub const KIND_WRITE_PROTECT: u32 = 0;
    /// Write to a page that was not present (first touch of anonymous or file memory).
    pub const KIND_WRITE_NOT_PRESENT: u32 = 1;
    /// Read of a page that was not present.
    pub const KIND_READ_NOT_PRESENT: u32 = 2;
    /// Read of a present page that the PTE forbade (PROT_NONE, NUMA hinting).
    pub const KIND_READ_PROTECT: u32 = 3;
    /// Instruction fetch.
    pub const KIND_EXEC: u32 = 4;
    /// Number of kinds.
    pub const KINDS: u32 = 5;

    /// The fault was taken in user mode.
    pub const MODE_USER: u32 = 0;
    /// The fault was taken in kernel mode (e.g. `copy_to_user` touching a user page).
    pub const MODE_KERNEL: u32 = 1;
    /// Number of modes.
    pub const MODES: u32 = 2;

    /// Number of (kind, mode) slots.
    pub const SLOTS: usize = (KINDS * MODES) as usize;

    /// The kind of a fault from its error code.
    #[inline(always)]
    pub const fn kind(error_code: u64) -> u32 {
        if error_code & PF_INSTR != 0 {
            KIND_EXEC
        } else if error_code & PF_WRITE != 0 {
            if error_code & PF_PROT != 0 {
                KIND_WRITE_PROTECT
            } else {
                KIND_WRITE_NOT_PRESENT
            }
        } else if error_code & PF_PROT != 0 {
            KIND_READ_PROTECT
        } else {
            KIND_READ_NOT_PRESENT
        }
    }

    /// The mode of a fault from its error code.
    #[inline(always)]
    pub const fn mode(error_code: u64) -> u32 {
        if error_code & PF_USER != 0 {
            MODE_USER
        } else {
            MODE_KERNEL
        }
    }

    /// The counter slot of a (kind, mode) pair.
    #[inline(always)]
    pub const fn slot(kind: u32, mode: u32) -> u32 {
        mode * KINDS + kind
    }

    /// Label value of a kind, as exported.
    pub const fn kind_name(kind: u32) -> &'static str {
        match kind {
            KIND_WRITE_PROTECT => "write_protect",
            KIND_WRITE_NOT_PRESENT => "write_not_present",
            KIND_READ_NOT_PRESENT => "read_not_present",
            KIND_READ_PROTECT => "read_protect",
            KIND_EXEC => "exec",
            _ => "unknown",
        }
    }

    /// Label value of a mode, as exported.
    pub const fn mode_name(mode: u32) -> &'static str {
        match mode {
            MODE_USER => "user",
            _ => "kernel",
        }
    }
}

/// Indices of the per-CPU `STATS` array: the programs' own bookkeeping.
pub mod stat {
    /// New rows inserted into the per-process fault table.
    pub const PROC_FAULT_INSERTS: u32 = 0;
    /// Inserts into the per-process fault table that failed (the fault is still
    /// counted globally and so lands in the `other` row).
    pub const PROC_FAULT_INSERT_ERRORS: u32 = 1;
    /// Tracepoint records that could not be read.
    pub const TP_READ_ERRORS: u32 = 2;
    /// New rows inserted into the per-process COW table.
    pub const PROC_COW_INSERTS: u32 = 3;
    /// Inserts into the per-process COW table that failed.
    pub const PROC_COW_INSERT_ERRORS: u32 = 4;
    /// Write-protect faults seen by the function-hook COW rung (fentry/kprobe).
    pub const COW_WP_CALLS: u32 = 5;
    /// Number of slots.
    pub const SLOTS: u32 = 8;
}

/// Per-process page-fault counts (value of the `PROC_FAULTS` LRU map, key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcFaults {
    /// Faults by `fault::slot(kind, mode)`.
    pub counts: [u64; fault::SLOTS],
    /// `comm` of the thread that created the row.
    pub comm: [u8; COMM_LEN],
}

/// Per-process counts of the COW family on a function-hook rung (value of the
/// `PROC_COW` LRU map, key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcCow {
    /// Write-protect faults handled (`do_wp_page` calls).
    pub wp_faults: u64,
    /// `comm` of the thread that created the row.
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::ProcFaults {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcCow {}
}

#[cfg(test)]
mod tests {
    use super::fault::*;

    #[test]
    fn classify_error_codes() {
        // present + write + user: the COW case.
        assert_eq!(kind(0b111), KIND_WRITE_PROTECT);
        assert_eq!(mode(0b111), MODE_USER);
        assert_eq!(kind(0b110), KIND_WRITE_NOT_PRESENT);
        assert_eq!(kind(0b100), KIND_READ_NOT_PRESENT);
        assert_eq!(kind(0b101), KIND_READ_PROTECT);
        assert_eq!(kind(0b10100), KIND_EXEC);
        assert_eq!(kind(0b10101), KIND_EXEC);
        assert_eq!(mode(0b011), MODE_KERNEL);
        assert_eq!(slot(KIND_EXEC, MODE_KERNEL) as usize, SLOTS - 1);
    }
}
