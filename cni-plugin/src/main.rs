//! `sinew`: the CNI plugin binary executed by the container runtime.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use sinew_cni::datapath::KernelDatapath;

fn main() -> ExitCode {
    let outcome = sinew_cni::execute(
        |k| std::env::var(k).ok(),
        std::io::stdin().lock(),
        &KernelDatapath,
    );
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    if outcome.success && written.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
