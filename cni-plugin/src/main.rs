//! `sinew`: scaffold only. The implementation is tracked in issue #3.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sinew {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("sinew: not implemented yet (issue #3)");
    ExitCode::FAILURE
}
