//! CNI errors: every failure leaves the plugin as the spec's error object on stdout, with the
//! spec's code and a message that names what was wrong.

use serde::Serialize;

/// Error codes of the CNI specification (1.1.0, "Error" section), plus sinew's own (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID, etc.
    InvalidEnvironment = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidNetworkConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// STATUS: the plugin is not available (cannot serve ADDs).
    PluginNotAvailable = 50,
    /// CHECK found the pod's network differs from what ADD set up.
    CheckMismatch = 100,
    /// Programming the kernel (netlink) failed.
    Datapath = 101,
}

/// An error in the spec's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {code})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"internal error\"}}", self.code))
    }
}

pub type CniResult<T> = Result<T, CniError>;
