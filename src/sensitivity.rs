//! SQNR metrics and sensitivity.
