use std::path::PathBuf;
fn main() {
    let mut bad = 0;
    for a in std::env::args().skip(1) {
        match mnq::golden::run_file(&PathBuf::from(&a)) {
            Ok(r) => { println!("{}", r.line()); if !r.exact() { bad += 1; } }
            Err(e) => { println!("error: {e}"); bad += 1; }
        }
    }
    std::process::exit(if bad > 0 { 1 } else { 0 });
}
