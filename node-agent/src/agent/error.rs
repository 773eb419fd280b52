//! The agent's errors, each with the label `/metrics` counts it under
//! (`sinew_node_pass_errors_total{kind}`).

use sinew_node_lib::netlink::NetlinkError;

use crate::nat::NatError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("{what}: {source}")]
    Files {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nftables(#[from] NatError),
    /// The node itself is not as the agent needs it (e.g. no interface holds its address).
    #[error("{0}")]
    Node(String),
}

impl Error {
    /// The metric label of this kind of error.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Api(_) => "api",
            Error::Netlink(_) => "netlink",
            Error::Files { .. } => "files",
            Error::Nftables(_) => "nftables",
            Error::Node(_) => "node",
        }
    }

    /// An I/O error on node-local files, saying what was being done.
    pub fn files(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Files { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_kind() {
        let e = Error::files("writing node.json")(std::io::Error::other("disk full"));
        assert_eq!(e.label(), "files");
        assert_eq!(e.to_string(), "writing node.json: disk full");
        assert_eq!(Error::Node("no underlay".into()).label(), "node");
    }
}
