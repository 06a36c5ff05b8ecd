//! Cycle models against the golden models, for every lane count, without Verilator: each
//! configuration streams realistic and corner rows under random input gaps and back-pressure.

use mnq::cosim::{golden_mismatches, golden_unit, sessions, CosimOptions};
use mnq::cycle;
use mnq::hdl::{RtlConfig, LANES, RTL_UNITS};
use mnq::units::Preset;

#[test]
fn cycle_models_equal_golden_models() {
    for unit in RTL_UNITS {
        for bits in [6, 8] {
            for lanes in LANES {
                for preset in [Preset::Reference, Preset::Adapted] {
                    if *unit == "gelu_ivit" && preset == Preset::Reference {
                        continue; // the row-wise reference ShiftGELU has no hardware yet
                    }
                    let cfg = RtlConfig::new(unit, bits, lanes).unwrap();
                    let opts = CosimOptions {
                        elements: 4000,
                        seed: lanes as u64,
                        p_valid: 0.7,
                        p_ready: 0.6,
                        preset,
                        rtl_dir: "rtl".into(),
                        work_dir: "target/cosim".into(),
                        vcd: None,
                    };
                    let golden = golden_unit(&cfg, preset).unwrap();
                    let ss = match sessions(&cfg, &opts) {
                        Ok(s) => s,
                        Err(e) => panic!("{} {preset}: {e}", cfg.name()),
                    };
                    for ses in ss {
                        let t = cycle::run(
                            cycle::model(&cfg).as_mut(),
                            &ses.stim,
                            ses.stim.beats.len(),
                            (100 + mnq::cosim::engine_cycles_per_beat(&cfg)) * ses.stim.beats.len() as u64
                                + 1024 * ses.rows.len() as u64
                                + 2000,
                        );
                        assert_eq!(t.beats.len(), ses.stim.beats.len(), "{} {preset}: stalled", cfg.name());
                        let bad = golden_mismatches(&cfg, &ses, &t, golden.as_ref()).unwrap();
                        assert_eq!(bad, 0, "{} {preset}: {bad} outputs differ from the golden model", cfg.name());
                        let rows_ended = t.beats.iter().filter(|b| b.last).count();
                        if lanes == 4 && bits == 8 {
                            println!(
                                "{} {preset}: {} rows, {} beats, {} cycles, golden-exact",
                                cfg.name(),
                                ses.rows.len(),
                                t.beats.len(),
                                t.cycles
                            );
                        }
                        assert_eq!(rows_ended, ses.rows.len(), "{}: one last flag per row", cfg.name());
                    }
                }
            }
        }
    }
}
