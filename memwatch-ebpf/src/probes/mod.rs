//! One file per probe area (STYLE.md). The agent's file of the same area
//! (`memwatch/src/probes/<area>.rs`) names the programs defined here and the
//! tracepoint-offset globals they read; `probes::object_tests` checks that they exist.

pub mod cow;
pub mod faults;
pub mod fork;
pub mod lru;
pub mod reclaim;
pub mod writeback;
