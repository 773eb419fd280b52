//! The sinew CNI plugin as a library: the CNI protocol, node-local IPAM and the datapath.
//! The `sinew` binary is a thin shell around [`execute`]; kernel objects, the IPAM
//! store and the node state come from `sinew-node-lib`, shared with the node agent.

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod datapath;
pub mod error;
pub mod invocation;
pub mod logging;
pub mod result;
pub mod version;

use std::io::Read;

use datapath::Datapath;
use error::CniError;
use invocation::Invocation;

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

/// The `cniVersion` to answer an error with: the caller's, if readable and supported.
fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string())
}

/// Runs one plugin invocation: environment through `env`, configuration from `stdin`.
pub fn execute(
    env: impl Fn(&str) -> Option<String>,
    stdin: impl Read,
    dp: &dyn Datapath,
) -> Outcome {
    let bytes = match config::read_bounded(stdin) {
        Ok(b) => b,
        Err(e) => return failure(&e, "1.1.0"),
    };
    let outcome = Invocation::from_env(env).and_then(|inv| commands::run(&inv, &bytes, dp));
    match outcome {
        Ok(Some(v)) => Outcome {
            stdout: v.to_string(),
            success: true,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            success: true,
        },
        Err(e) => {
            tracing::error!(code = e.code, error = %e.msg, "CNI command failed");
            failure(&e, &error_version(&bytes))
        }
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version),
        success: false,
    }
}
