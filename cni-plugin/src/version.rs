//! CNI specification versions sinew speaks.

use crate::error::{CniError, CniResult, Code};

/// Every version this plugin accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed `cniVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u8, pub u8, pub u8);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses and checks that the version is one sinew supports.
    pub fn parse_supported(s: &str) -> CniResult<Version> {
        if !SUPPORTED.contains(&s) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {s:?} is not supported; supported: {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let mut parts = s.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
        Ok(Version(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        ))
    }

    /// Results before 1.0.0 carry a `version` field per IP.
    pub fn ips_carry_family(self) -> bool {
        self < Version::V1_0_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_supported_version_and_orders_them() {
        let parsed: Vec<Version> = SUPPORTED
            .iter()
            .map(|v| Version::parse_supported(v).unwrap())
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(parsed.last().unwrap().to_string(), "1.1.0");
    }

    #[test]
    fn refuses_unknown_versions_with_code_1() {
        for v in ["0.2.0", "2.0.0", "1.1", "", "latest"] {
            let e = Version::parse_supported(v).unwrap_err();
            assert_eq!(e.code, 1, "{v}");
            assert!(e.msg.contains("not supported"));
        }
    }
}
