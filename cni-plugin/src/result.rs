//! The CNI result of ADD, and its rendering for every supported `cniVersion`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{CniError, CniResult, Code};
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.5/32`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A CNI result in sinew's internal (1.1.0) shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniOutput {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

impl CniOutput {
    /// Reads a `prevResult` of any supported version (the per-IP `version` field of 0.3/0.4
    /// results is simply dropped).
    pub fn from_prev_result(prev: &Value) -> CniResult<CniOutput> {
        if !prev.is_object() {
            return Err(CniError::new(
                Code::Decode,
                "field \"prevResult\" must be a JSON object",
            ));
        }
        serde_json::from_value(prev.clone()).map_err(|e| {
            CniError::new(
                Code::Decode,
                format!(
                    "field \"prevResult\" is not a CNI result: {}",
                    crate::config::redact(&e.to_string())
                ),
            )
        })
    }

    /// Appends `ours` after the interfaces and addresses already in `self` (chaining).
    pub fn merge(mut self, ours: CniOutput) -> CniOutput {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if self.dns.is_null() {
            self.dns = ours.dns;
        }
        self
    }

    /// Renders the result for the caller's `cniVersion`.
    pub fn render(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name});
                if let Some(mac) = &i.mac {
                    v["mac"] = json!(mac);
                }
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                    v["mtu"] = json!(mtu);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({"address": ip.address});
                if version.ips_carry_family() {
                    let family = if ip.address.contains(':') { "6" } else { "4" };
                    v["version"] = json!(family);
                }
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    v["interface"] = json!(i);
                }
                v
            })
            .collect();
        let mut out = json!({
            "cniVersion": version.to_string(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": self.routes,
        });
        out["dns"] = if self.dns.is_null() {
            json!({})
        } else {
            self.dns.clone()
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "snw0".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: None,
                    sandbox: Some("/var/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".into(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".into(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: Value::Null,
        }
    }

    #[test]
    fn old_versions_carry_ip_family_and_no_mtu() {
        let v = sample().render(Version(0, 3, 1));
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn new_versions_drop_family_and_1_1_has_mtu() {
        let v = sample().render(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().render(Version::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
        assert_eq!(v["dns"], json!({}));
    }

    #[test]
    fn chaining_appends_and_reindexes() {
        let prev = sample().render(Version(0, 4, 0));
        let merged = CniOutput::from_prev_result(&prev).unwrap().merge(sample());
        assert_eq!(merged.interfaces.len(), 4);
        assert_eq!(merged.ips[2].interface, Some(3));
        assert!(CniOutput::from_prev_result(&json!({"ips": "nope"})).is_err());
    }
}
