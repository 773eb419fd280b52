//! `crdgen`: writes the CRD manifests into the chart (`--check` only reports stale files).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use sinew_crds::generate::{self, CHART_CRD_DIR};

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CHART_CRD_DIR);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--out" => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => {
                    eprintln!("crdgen: --out needs a directory");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!(
                    "crdgen: unknown argument {other:?}\nusage: crdgen [--check] [--out DIR]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let result = if check {
        generate::stale(&dir).map(|stale| {
            for f in &stale {
                eprintln!("stale: {}", dir.join(f).display());
            }
            stale.is_empty()
        })
    } else {
        generate::write(&dir).map(|written| {
            for f in &written {
                println!("wrote {}", f.display());
            }
            true
        })
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}
