//! One file per probe area (STYLE.md). The agent's hook table
//! (`memwatch/src/probes/table.rs`) names the programs defined here.

pub mod cow;
pub mod faults;
