//! One file per probe area (STYLE.md). The agent's hook table
//! (`memwatch/src/probes/table.rs`) names the programs defined here and the
//! tracepoint-offset globals they read.

pub mod cow;
pub mod faults;
pub mod fork;
pub mod lru;
pub mod reclaim;
pub mod writeback;
