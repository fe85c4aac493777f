//! Empty library target: lets `memwatch` list this crate as a build-dependency so cargo
//! rebuilds the agent when the programs change. The programs are in the `memwatch` bin.
#![no_std]
