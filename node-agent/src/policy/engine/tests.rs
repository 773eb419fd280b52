use super::*;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sinew_policy::{PodView, PolicyView};

/// What the loop asked of the kernel, and the kernel's answers.
#[derive(Default)]
struct FakeKernel {
    table: Option<Table>,
    calls: Vec<&'static str>,
    refuse_update: bool,
}

impl PolicyKernel for &mut FakeKernel {
    fn exists(&mut self) -> Result<bool, NftError> {
        Ok(self.table.is_some())
    }

    fn replace(&mut self, table: &Table) -> Result<(), NftError> {
        self.calls.push("replace");
        self.table = Some(table.clone());
        Ok(())
    }

    fn update(&mut self, old: &Table, new: &Table) -> Result<(), NftError> {
        self.calls.push("update");
        assert_eq!(
            self.table.as_ref(),
            Some(old),
            "an update starts from the table held"
        );
        if self.refuse_update {
            return Err(NftError::Kernel {
                op: "add element inet sinew-policy ingress-0-ports4".into(),
                errno: 22,
                message: "Invalid argument".into(),
            });
        }
        self.table = Some(new.clone());
        Ok(())
    }

    fn delete(&mut self) -> Result<(), NftError> {
        self.calls.push("delete");
        self.table = None;
        Ok(())
    }
}

fn web(labels: serde_json::Value) -> PodView {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": labels},
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.2"}]}
    }))
    .unwrap();
    PodView::from(&p)
}

fn deny_all_ingress() -> PolicyView {
    let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    PolicyView::from(&p)
}

fn ifs() -> Vec<PodInterface> {
    vec![
        PodInterface {
            interface: "snw1".into(),
            pod: Some(ObjectKey::new("shop", "web-1")),
        },
        PodInterface {
            interface: "snw2".into(),
            pod: Some(ObjectKey::new("shop", "web-2")),
        },
    ]
}

/// The table goes in whole once, then only by differences, and not at all when nothing
/// changed; a pod the agent has not seen is held and counted.
#[test]
fn the_table_is_written_whole_once_then_by_differences() {
    let mut kernel = FakeKernel::default();
    let mut engine = Engine::new(&mut kernel);
    let open = World::new([], [web(serde_json::json!({"app": "web"}))], []);
    let first = engine.program(&open, "n1", &ifs()).unwrap();
    assert!(first.changed);
    assert_eq!(first.report.classes, 0);
    assert_eq!(first.held, 1, "shop/web-2 is not known yet");
    let again = engine.program(&open, "n1", &ifs()).unwrap();
    assert!(!again.changed);
    let isolated = World::new(
        [],
        [web(serde_json::json!({"app": "web"}))],
        [deny_all_ingress()],
    );
    let third = engine.program(&isolated, "n1", &ifs()).unwrap();
    assert!(third.changed);
    assert_eq!(third.report.classes, 1);
    drop(engine);
    assert_eq!(kernel.calls, ["replace", "update"]);
    let text = sinew_node_lib::nft::text::replace_script(kernel.table.as_ref().unwrap());
    assert!(
        text.contains(r#""snw1" comment "shop/web-1" : jump ingress-0"#),
        "{text}"
    );
}

/// A table someone flushed is written whole again; a refused update falls back to a whole
/// table; disabling removes it, once.
#[test]
fn a_lost_table_or_a_refused_update_is_written_whole() {
    let mut kernel = FakeKernel::default();
    let world = World::new([], [web(serde_json::json!({"app": "web"}))], []);
    let isolated = World::new(
        [],
        [web(serde_json::json!({"app": "web"}))],
        [deny_all_ingress()],
    );
    {
        let mut engine = Engine::new(&mut kernel);
        engine.program(&world, "n1", &ifs()).unwrap();
    }
    kernel.table = None;
    kernel.refuse_update = true;
    let mut engine = Engine::new(&mut kernel);
    engine.program(&world, "n1", &ifs()).unwrap();
    engine.program(&isolated, "n1", &ifs()).unwrap();
    assert!(engine.remove().unwrap());
    assert!(!engine.remove().unwrap());
    drop(engine);
    assert_eq!(
        kernel.calls,
        ["replace", "replace", "update", "replace", "delete"]
    );
}

/// A pod whose labels change moves between "isolated" and "not": one update each way.
#[test]
fn a_label_change_moves_the_pod_in_and_out_of_its_class() {
    let mut kernel = FakeKernel::default();
    let mut engine = Engine::new(&mut kernel);
    let with = |labels| World::new([], [web(labels)], [deny_all_ingress()]);
    let a = engine
        .program(&with(serde_json::json!({"app": "web"})), "n1", &ifs())
        .unwrap();
    let b = engine
        .program(&with(serde_json::json!({"app": "other"})), "n1", &ifs())
        .unwrap();
    assert_eq!((a.report.classes, b.report.classes), (1, 0));
    assert!(b.changed);
}

#[test]
fn interfaces_come_from_the_ipam_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ipam::Store::new(dir.path());
    store
        .update(|s| {
            for (id, pod) in [("c1", Some("web-1")), ("c2", None)] {
                s.attachments.insert(
                    format!("{id}/eth0"),
                    ipam::Attachment {
                        container_id: id.into(),
                        ifname: "eth0".into(),
                        netns: None,
                        host_veth: format!("snw{id}"),
                        mtu: 1450,
                        addresses: Vec::new(),
                        pod_namespace: pod.map(|_| "shop".to_string()),
                        pod_name: pod.map(str::to_string),
                        pod_uid: None,
                        network: None,
                        port_mappings: Vec::new(),
                    },
                );
            }
        })
        .unwrap();
    assert_eq!(
        interfaces(dir.path()).unwrap(),
        [
            PodInterface {
                interface: "snwc1".into(),
                pod: Some(ObjectKey::new("shop", "web-1")),
            },
            PodInterface {
                interface: "snwc2".into(),
                pod: None,
            },
        ]
    );
}

/// A policy created and deleted a hundred times in a row: each change is one batch of
/// differences (never the whole table), and the kernel ends with exactly the last state.
#[test]
fn a_flapping_policy_is_followed_by_updates_only() {
    let mut kernel = FakeKernel::default();
    let open = World::new([], [web(serde_json::json!({"app": "web"}))], []);
    let isolated = World::new(
        [],
        [web(serde_json::json!({"app": "web"}))],
        [deny_all_ingress()],
    );
    let mut engine = Engine::new(&mut kernel);
    for i in 0..100 {
        let world = if i % 2 == 0 { &isolated } else { &open };
        assert!(engine.program(world, "n1", &ifs()).unwrap().changed);
    }
    let last = render(
        &compile(&open, "n1"),
        &open,
        &programmable(&ifs(), &open),
        false,
    );
    drop(engine);
    assert_eq!(kernel.calls.iter().filter(|c| **c == "replace").count(), 1);
    assert_eq!(kernel.calls.iter().filter(|c| **c == "update").count(), 99);
    assert_eq!(kernel.table, Some(last));
}

/// The drop log's switch adds the log rules by an update and takes them away again; the
/// drop counters stay in the table either way.
#[test]
fn the_drop_log_switch_adds_and_removes_the_log_rules_by_updates() {
    let mut kernel = FakeKernel::default();
    let mut engine = Engine::new(&mut kernel);
    let isolated = World::new(
        [],
        [web(serde_json::json!({"app": "web"}))],
        [deny_all_ingress()],
    );
    let logs = |engine: &mut Engine<&mut FakeKernel>| {
        assert!(engine.program(&isolated, "n1", &ifs()).unwrap().changed);
        let text = sinew_node_lib::nft::text::replace_script(engine.last.as_ref().unwrap());
        assert!(
            text.contains("counter name \"dropped-ingress\" drop"),
            "{text}"
        );
        text.contains("log prefix \"ingress-0 shop/deny\" group 1")
    };
    assert!(!logs(&mut engine), "off by default");
    engine.set_log(true);
    assert!(logs(&mut engine));
    engine.set_log(false);
    assert!(!logs(&mut engine));
    drop(engine);
    assert_eq!(kernel.calls, ["replace", "update", "update"]);
}
