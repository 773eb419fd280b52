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

use crate::datapath::Kernel;

/// What became of the release requests of one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Freed: (block, request).
    pub freed: Vec<(String, ReleaseRequest)>,
    /// Kept because the pod's sandbox is alive on this node: (block, request, host veth).
    pub kept: Vec<(String, ReleaseRequest, String)>,
}

/// Carries out `requests` ((block, request)) against `store`, under its lock; `nl` (in the
/// node's network namespace) tells whether a host veth still exists.
pub fn release(
    store: &ipam::Store,
    nl: &mut dyn Kernel,
    requests: &[(String, ReleaseRequest)],
) -> std::io::Result<Outcome> {
    store.update(|st| {
        decide(st, requests, &mut |veth| {
            nl.link_by_name(veth)
                .map(|l| l.is_some())
                .map_err(|e| e.to_string())
        })
    })
}

/// The rule: an allocation is freed only if it still matches the request exactly (address,
/// slot generation, pod UID: an address freed and handed to a new pod since has another
/// generation, a new pod another UID) and its host veth is gone (`sandbox_alive`, by veth
/// name). Where that cannot be told, the address is kept (doubt keeps).
pub fn decide(
    st: &mut ipam::IpamState,
    requests: &[(String, ReleaseRequest)],
    sandbox_alive: &mut dyn FnMut(&str) -> Result<bool, String>,
) -> Outcome {
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
        match sandbox_alive(&veth) {
            Ok(false) => {
                if st.remove_attachment(&key).is_some() {
                    outcome.freed.push((block.clone(), r.clone()));
                }
            }
            Ok(true) => outcome.kept.push((block.clone(), r.clone(), veth)),
            Err(e) => {
                tracing::warn!(block = %block, ip = %r.ip, veth = %veth, error = %e, "cannot tell whether the pod's sandbox is alive; keeping its address");
                outcome.kept.push((block.clone(), r.clone(), veth));
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::ipam::{Attachment, HeldAddress, Slot};
    use sinew_node_lib::netlink::Netlink;
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

    fn held(st: &ipam::IpamState) -> Vec<String> {
        let mut held: Vec<String> = st
            .attachments
            .values()
            .flat_map(|a| a.addresses.iter().map(|h| h.ip.to_string()))
            .collect();
        held.sort();
        held
    }

    #[test]
    fn only_an_exact_match_whose_sandbox_is_gone_is_freed() {
        let mut st = ipam::IpamState::default();
        attach(&mut st, "10.9.0.5", "gone", "veth-gone");
        attach(&mut st, "10.9.0.6", "new-pod", "veth-new");
        attach(&mut st, "10.9.0.7", "alive", "veth-alive");
        attach(&mut st, "10.9.0.8", "unknown", "veth-unknown");
        let mut reused = request("10.9.0.6", "old-pod");
        reused.generation = 1;
        let mut regenerated = request("10.9.0.5", "gone");
        regenerated.generation = 2;
        let b = |r: ReleaseRequest| ("10-9-0-0-26".to_string(), r);
        let requests = vec![
            b(regenerated),
            b(reused),
            b(request("10.9.0.7", "alive")),
            b(request("10.9.0.8", "unknown")),
            b(request("10.9.0.9", "never-held")),
        ];
        let mut asked = Vec::new();
        let out = decide(&mut st, &requests, &mut |veth| {
            asked.push(veth.to_string());
            match veth {
                "veth-alive" => Ok(true),
                "veth-unknown" => Err("netlink: no buffer space".into()),
                _ => Ok(false),
            }
        });
        assert!(
            out.freed.is_empty(),
            "another generation or another pod's UID frees nothing: {out:?}"
        );
        assert_eq!(
            asked,
            ["veth-alive", "veth-unknown"],
            "only exact matches are looked at"
        );
        assert_eq!(
            out.kept
                .iter()
                .map(|(_, r, _)| r.ip.as_str())
                .collect::<Vec<_>>(),
            ["10.9.0.7", "10.9.0.8"],
            "a live sandbox keeps its address, and so does doubt"
        );
        assert_eq!(held(&st), ["10.9.0.5", "10.9.0.6", "10.9.0.7", "10.9.0.8"]);

        let out = decide(&mut st, &[b(request("10.9.0.5", "gone"))], &mut |_| {
            Ok(false)
        });
        assert_eq!(out.freed, [b(request("10.9.0.5", "gone"))]);
        assert_eq!(held(&st), ["10.9.0.6", "10.9.0.7", "10.9.0.8"]);
        let again = decide(&mut st, &[b(request("10.9.0.5", "gone"))], &mut |_| {
            Ok(false)
        });
        assert_eq!(
            again,
            Outcome::default(),
            "a request carried out is not carried out twice"
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
