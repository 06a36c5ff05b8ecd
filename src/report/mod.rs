//! Plots and tables.
