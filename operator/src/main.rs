//! `sinew-operator`: scaffold only. The implementation is tracked in issue #5.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sinew-operator {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("sinew-operator: not implemented yet (issue #5)");
    ExitCode::FAILURE
}
