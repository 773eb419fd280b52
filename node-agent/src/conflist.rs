//! Renders the CNI network configuration list from the `ClusterNetwork` spec (pure).

use std::path::Path;

use serde_json::{Value, json};
use sinew_crds::cluster_network::{CniSettings, LogLevel};

/// Name of the network in the conflist.
pub const NETWORK_NAME: &str = "sinew";

/// File name of the conflist: `<priority>-sinew.conflist` (runtimes take the first by name).
pub fn file_name(cni: &CniSettings) -> String {
    format!("{:02}-sinew.conflist", cni.conf_priority)
}

/// The conflist: `sinew` first (asking the runtime for the pod's annotations and host ports),
/// then the chained plugins in order, each with its extra configuration keys.
pub fn render(cni: &CniSettings, level: LogLevel, state_dir: &Path, log_file: &Path) -> Vec<u8> {
    let mut plugins = vec![json!({
        "type": "sinew",
        "stateDir": state_dir,
        "logFile": log_file,
        "logLevel": level.as_str(),
        "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true},
    })];
    for chained in &cni.chain {
        let mut plugin = Value::Object(chained.config.clone().unwrap_or_default());
        plugin["type"] = json!(chained.plugin_type);
        plugins.push(plugin);
    }
    let conflist = json!({
        "cniVersion": cni.cni_version.as_str(),
        "name": NETWORK_NAME,
        "plugins": plugins,
    });
    let mut bytes = serde_json::to_vec_pretty(&conflist).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::cluster_network::{ChainedPlugin, ConflistVersion};

    #[test]
    fn renders_sinew_first_then_the_chain() {
        let mut cni = CniSettings::default();
        cni.chain.push(ChainedPlugin {
            plugin_type: "portmap".into(),
            config: serde_json::from_value(
                json!({"capabilities": {"portMappings": true}, "type": "evil"}),
            )
            .ok(),
        });
        cni.cni_version = ConflistVersion::V1_0_0;
        let v: Value = serde_json::from_slice(&render(
            &cni,
            LogLevel::Info,
            Path::new("/var/lib/sinew"),
            Path::new("/var/log/sinew/cni.log"),
        ))
        .unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "sinew");
        assert_eq!(v["plugins"][0]["stateDir"], "/var/lib/sinew");
        assert_eq!(
            v["plugins"][0]["capabilities"]["portMappings"], true,
            "sinew maps hostPorts itself"
        );
        assert_eq!(
            v["plugins"][1]["type"], "portmap",
            "config cannot override the type"
        );
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(file_name(&cni), "10-sinew.conflist");
    }

    #[test]
    fn rendering_is_byte_stable() {
        let cni = CniSettings::default();
        let a = render(&cni, LogLevel::Debug, Path::new("/s"), Path::new("/l"));
        assert_eq!(
            a,
            render(&cni, LogLevel::Debug, Path::new("/s"), Path::new("/l"))
        );
    }
}
