//! Unit costs: area from yosys synthesis of the generated Verilog, latency from the cycle models.
