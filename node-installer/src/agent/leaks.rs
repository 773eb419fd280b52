//! The operator's leak release requests, carried out with the node's own evidence.
//!
//! The operator asks for an allocation to be freed when its pod has been gone from the API
//! server for the grace period. The API server is not the whole truth: a static pod whose
//! mirror pod is missing, or a sandbox the kubelet has not torn down yet, runs with no Pod
//! object. The node knows better: a pod's host veth lives exactly as long as the pod's network
//! namespace (the kernel deletes both ends of a veth pair with the namespace), so while the
//! host veth of an allocation exists, its sandbox is alive and the address is kept, whatever
//! the request says. Only an allocation whose veth is gone is freed, under the store lock
//! (checked there, so an ADD for the same container waits for the decision): the veth first,
//! then the record, as everywhere in sinew.

use sinew_crds::ReleaseRequest;
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::Netlink;

/// What became of the release requests of one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Freed: (block, request).
    pub freed: Vec<(String, ReleaseRequest)>,
    /// Kept because the pod's sandbox is alive on this node: (block, request, host veth).
    pub kept: Vec<(String, ReleaseRequest, String)>,
}

/// Carries out `requests` ((block, request)) against `store`: an allocation is freed only if
/// it still matches the request exactly (address, slot generation, pod UID) and its host veth
/// is gone (`nl` in the node's network namespace). A netlink error keeps it (doubt keeps).
pub fn release(
    store: &ipam::Store,
    nl: &mut Netlink,
    requests: &[(String, ReleaseRequest)],
) -> std::io::Result<Outcome> {
    store.update(|st| {
        let mut outcome = Outcome::default();
        for (block, r) in requests {
            let found = st
                .attachments
                .values()
                .find(|a| {
                    a.pod_uid.as_deref() == Some(r.pod_uid.as_str())
                        && a.addresses
                            .iter()
                            .any(|h| h.ip.to_string() == r.ip && h.generation == r.generation)
                })
                .map(|a| (a.key(), a.host_veth.clone()));
            let Some((key, veth)) = found else {
                continue;
            };
            match nl.link_by_name(&veth) {
                Ok(None) => {
                    if st.remove_attachment(&key).is_some() {
                        outcome.freed.push((block.clone(), r.clone()));
                    }
                }
                Ok(Some(_)) => outcome.kept.push((block.clone(), r.clone(), veth)),
                Err(e) => {
                    tracing::warn!(block = %block, ip = %r.ip, veth = %veth, error = %e, "cannot tell whether the pod's sandbox is alive; keeping its address");
                    outcome.kept.push((block.clone(), r.clone(), veth));
                }
            }
        }
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::ipam::{Attachment, HeldAddress, Slot};
    use sinew_node_lib::netns::NetNs;

    fn request(ip: &str, uid: &str) -> ReleaseRequest {
        ReleaseRequest {
            ip: ip.into(),
            generation: 1,
            pod_uid: uid.into(),
            pod: format!("default/{uid}"),
            missing_since: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn attach(st: &mut ipam::IpamState, ip: &str, uid: &str, veth: &str) {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let key = format!("ctr-{uid}/eth0");
        st.slots.insert(
            ip,
            Slot {
                generation: 1,
                holder: Some(key.clone()),
            },
        );
        st.attachments.insert(
            key,
            Attachment {
                container_id: format!("ctr-{uid}"),
                ifname: "eth0".into(),
                netns: None,
                host_veth: veth.into(),
                mtu: 1450,
                addresses: vec![HeldAddress {
                    ip,
                    block: "10.9.0.0/26".into(),
                    pool: "p".into(),
                    generation: 1,
                    mode: sinew_crds::PoolMode::Auto,
                }],
                pod_namespace: Some("default".into()),
                pod_name: Some(uid.into()),
                pod_uid: Some(uid.into()),
                network: None,
                port_mappings: Vec::new(),
            },
        );
    }

    /// Two test namespaces (never the host's): a node with a pod whose sandbox is alive (its
    /// veth exists), and the record of a pod whose sandbox is gone.
    #[test]
    fn an_address_whose_sandbox_is_alive_on_the_node_is_kept() {
        if !sinew_node_lib::netns::is_root() {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
            assert!(!ci, "needs root, and CI is set: refusing to skip");
            eprintln!("*** SKIPPING the leak release kernel test: needs root ***");
            return;
        }
        let tag = std::process::id();
        let node = NetNs::create(&format!("snw-leak-node-{tag}")).unwrap();
        let pod = NetNs::create(&format!("snw-leak-pod-{tag}")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ipam::Store::new(dir.path());
        store
            .update(|st| {
                attach(st, "10.9.0.5", "static", "snwleaklive");
                attach(st, "10.9.0.6", "gone", "snwleakgone");
            })
            .unwrap();
        let requests = vec![
            ("10-9-0-0-26".to_string(), request("10.9.0.5", "static")),
            ("10-9-0-0-26".to_string(), request("10.9.0.6", "gone")),
        ];
        let first = node
            .run_in(|| {
                let mut nl = Netlink::new().unwrap();
                nl.create_veth("snwleaklive", "eth0", &pod, 1450).unwrap();
                release(&store, &mut nl, &requests).unwrap()
            })
            .unwrap();
        assert_eq!(
            first.freed,
            vec![("10-9-0-0-26".to_string(), request("10.9.0.6", "gone"))]
        );
        assert_eq!(
            first.kept,
            vec![(
                "10-9-0-0-26".to_string(),
                request("10.9.0.5", "static"),
                "snwleaklive".to_string()
            )]
        );
        let held: Vec<String> = store
            .snapshot()
            .unwrap()
            .attachments
            .values()
            .flat_map(|a| a.addresses.iter().map(|h| h.ip.to_string()))
            .collect();
        assert_eq!(held, ["10.9.0.5"]);
        // The sandbox is torn down (its namespace goes, and the veth with it): now it goes.
        drop(pod);
        let freed = node
            .run_in(|| {
                let mut nl = Netlink::new().unwrap();
                for _ in 0..100 {
                    if nl.link_by_name("snwleaklive").unwrap().is_none() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                release(&store, &mut nl, &requests).unwrap()
            })
            .unwrap();
        assert_eq!(freed.freed.len(), 1, "{freed:?}");
        assert!(store.snapshot().unwrap().attachments.is_empty());
    }
}
