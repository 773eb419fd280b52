//! `sinew-node`: scaffold only. The implementation is tracked in issue #4.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sinew-node {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("sinew-node: not implemented yet (issue #4)");
    ExitCode::FAILURE
}
