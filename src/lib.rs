//! mnq: hardware co-design simulator for the integer non-linear units of vision transformers.
//!
//! See `README.md` for the commands and `../shared/design.md` for the module map.

pub mod cosim;
pub mod cost;
pub mod cycle;
pub mod fixed;
pub mod golden;
pub mod hdl;
pub mod io;
pub mod model;
pub mod report;
pub mod sensitivity;
pub mod study;
pub mod units;
