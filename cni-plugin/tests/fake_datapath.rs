//! The plugin's commands against a fake datapath: the order of effects between the kernel and
//! the IPAM store on ADD, DEL, CHECK and GC, and the rollback of a failed ADD. No root needed
//! (the pod namespace is this process's own, which only `open` touches).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};
use sinew_cni::datapath::{Datapath, DatapathError, SetupInfo};
use sinew_core::PoolMode;
use sinew_core::node::{NodeState, PoolState};
use sinew_node_lib::hostport::{PortMapping, Protocol};
use sinew_node_lib::ipam::{Attachment, Store};
use sinew_node_lib::netns::NetNs;
use sinew_node_lib::node_state;

/// One call into the datapath, with whether the store held the attachment at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Setup { recorded: bool },
    Teardown { veth: String, recorded: bool },
    RemoveVeth(String),
    Check,
    RemoveStray(BTreeSet<String>),
}

/// A datapath that records what it is asked to do and fails where told to.
struct Fake<'a> {
    store: Store,
    effects: RefCell<Vec<Effect>>,
    fail_setup: bool,
    fail_teardown: bool,
    check_problems: Vec<String>,
    /// The host ports of each attachment set up or torn down, in order.
    host_ports: RefCell<Vec<(&'static str, Vec<PortMapping>)>>,
    _dir: &'a Path,
}

impl<'a> Fake<'a> {
    fn new(dir: &'a Path) -> Fake<'a> {
        Fake {
            store: Store::new(dir),
            effects: RefCell::new(Vec::new()),
            fail_setup: false,
            fail_teardown: false,
            check_problems: Vec::new(),
            host_ports: RefCell::new(Vec::new()),
            _dir: dir,
        }
    }

    fn recorded(&self, veth: &str) -> bool {
        self.store
            .snapshot()
            .unwrap()
            .attachments
            .values()
            .any(|a| a.host_veth == veth)
    }

    fn effects(&self) -> Vec<Effect> {
        self.effects.borrow_mut().drain(..).collect()
    }
}

impl Datapath for Fake<'_> {
    fn setup(&self, a: &Attachment, _: &NetNs) -> Result<SetupInfo, DatapathError> {
        self.effects.borrow_mut().push(Effect::Setup {
            recorded: self.recorded(&a.host_veth),
        });
        self.host_ports
            .borrow_mut()
            .push(("setup", a.port_mappings.clone()));
        if self.fail_setup {
            return Err(DatapathError::Missing("injected setup failure".into()));
        }
        Ok(SetupInfo {
            host_mac: [2, 0, 0, 0, 0, 1],
            pod_mac: [2, 0, 0, 0, 0, 2],
        })
    }

    fn teardown(&self, a: &Attachment) -> Result<(), DatapathError> {
        self.effects.borrow_mut().push(Effect::Teardown {
            veth: a.host_veth.clone(),
            recorded: self.recorded(&a.host_veth),
        });
        self.host_ports
            .borrow_mut()
            .push(("teardown", a.port_mappings.clone()));
        if self.fail_teardown {
            return Err(DatapathError::Missing("injected teardown failure".into()));
        }
        Ok(())
    }

    fn remove_host_veth(&self, name: &str) -> Result<(), DatapathError> {
        self.effects
            .borrow_mut()
            .push(Effect::RemoveVeth(name.to_string()));
        Ok(())
    }

    fn check(&self, _: &Attachment, _: &NetNs) -> Vec<String> {
        self.effects.borrow_mut().push(Effect::Check);
        self.check_problems.clone()
    }

    fn remove_stray_host_veths(&self, live: &BTreeSet<String>) -> Result<(), DatapathError> {
        self.effects
            .borrow_mut()
            .push(Effect::RemoveStray(live.clone()));
        Ok(())
    }
}

fn node(dir: &Path) {
    let state = NodeState {
        node: "n1".into(),
        pools: vec![PoolState {
            name: "p".into(),
            cidr: "10.244.0.0/16".into(),
            mode: PoolMode::Auto,
            mtu: 1450,
            disabled: false,
            reserved: vec![],
            blocks: vec!["10.244.1.0/26".into()],
            exhausted: false,
        }],
        ready_boot: None,
    };
    node_state::store(&state, dir).unwrap();
}

fn run(command: &str, container: &str, conf: Value, dp: &dyn Datapath) -> (bool, Value) {
    let env = |k: &str| -> Option<String> {
        match k {
            "CNI_COMMAND" => Some(command.into()),
            "CNI_CONTAINERID" => Some(container.into()),
            "CNI_NETNS" => Some("/proc/self/ns/net".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_PATH" => Some("/opt/cni/bin".into()),
            "CNI_ARGS" => Some(format!(
                "K8S_POD_NAMESPACE=default;K8S_POD_NAME={container};K8S_POD_UID=uid-{container}"
            )),
            _ => None,
        }
    };
    let out = sinew_cni::execute(env, conf.to_string().as_bytes(), dp);
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out.stdout).unwrap()
    };
    (out.success, value)
}

fn conf(dir: &Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": "sinew", "type": "sinew",
           "stateDir": dir.to_str().unwrap()})
}

fn veth(container: &str) -> String {
    sinew_cni::datapath::host_veth_name(container, "eth0")
}

#[test]
fn add_records_before_programming_and_del_tears_down_before_forgetting() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let dp = Fake::new(dir.path());
    let (ok, result) = run("ADD", "c1", conf(dir.path()), &dp);
    assert!(ok, "{result}");
    assert_eq!(result["ips"][0]["address"], "10.244.1.0/32");
    // The address is recorded before the datapath exists: a crash in between leaves a record
    // DEL or GC can find, never a datapath nothing knows of.
    assert_eq!(dp.effects(), vec![Effect::Setup { recorded: true }]);

    let (ok, _) = run("DEL", "c1", conf(dir.path()), &dp);
    assert!(ok);
    assert_eq!(
        dp.effects(),
        vec![Effect::Teardown {
            veth: veth("c1"),
            recorded: true
        }],
        "the record goes only after the datapath"
    );
    assert!(!dp.recorded(&veth("c1")));
    // A second DEL finds no record and still removes a veth a crashed ADD may have left.
    let (ok, _) = run("DEL", "c1", conf(dir.path()), &dp);
    assert!(ok);
    assert_eq!(dp.effects(), vec![Effect::RemoveVeth(veth("c1"))]);
}

#[test]
fn a_failed_add_is_rolled_back_and_keeps_its_record_when_the_rollback_fails() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let mut dp = Fake::new(dir.path());
    dp.fail_setup = true;
    let (ok, err) = run("ADD", "c1", conf(dir.path()), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 101, "{err}");
    assert_eq!(
        dp.effects(),
        vec![
            Effect::Setup { recorded: true },
            Effect::Teardown {
                veth: veth("c1"),
                recorded: true
            }
        ]
    );
    assert!(
        !dp.recorded(&veth("c1")),
        "rolled back: the address is free"
    );

    // The rollback itself fails: the record stays, for DEL or GC to finish.
    dp.fail_teardown = true;
    let (ok, _) = run("ADD", "c2", conf(dir.path()), &dp);
    assert!(!ok);
    assert!(dp.recorded(&veth("c2")));
    dp.effects();

    // A repeated ADD of a live attachment that fails is not rolled back (it was working).
    dp.fail_setup = false;
    dp.fail_teardown = false;
    assert!(run("ADD", "c3", conf(dir.path()), &dp).0);
    dp.effects();
    dp.fail_setup = true;
    assert!(!run("ADD", "c3", conf(dir.path()), &dp).0);
    assert_eq!(dp.effects(), vec![Effect::Setup { recorded: true }]);
    assert!(dp.recorded(&veth("c3")));
}

#[test]
fn a_failed_del_keeps_the_address() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let mut dp = Fake::new(dir.path());
    assert!(run("ADD", "c1", conf(dir.path()), &dp).0);
    dp.fail_teardown = true;
    let (ok, err) = run("DEL", "c1", conf(dir.path()), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 101, "{err}");
    assert!(
        dp.recorded(&veth("c1")),
        "the address is not freed under a live datapath"
    );
}

#[test]
fn check_reports_the_kernels_differences() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let mut dp = Fake::new(dir.path());
    assert!(run("ADD", "c1", conf(dir.path()), &dp).0);
    dp.effects();
    assert!(run("CHECK", "c1", conf(dir.path()), &dp).0);
    assert_eq!(dp.effects(), vec![Effect::Check]);
    dp.check_problems = vec!["route 10.244.1.1/32 missing".into()];
    let (ok, err) = run("CHECK", "c1", conf(dir.path()), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 100);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("route 10.244.1.1/32 missing")
    );
    assert_eq!(dp.effects(), vec![Effect::Check]);
    // CHECK of an unknown attachment: no datapath call.
    let (ok, err) = run("CHECK", "c9", conf(dir.path()), &dp);
    assert!(!ok && err["code"] == 3, "{err}");
    assert!(dp.effects().is_empty());
}

#[test]
fn gc_tears_down_stale_attachments_then_strays_keeping_the_live() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let mut dp = Fake::new(dir.path());
    for c in ["live", "stale", "stuck"] {
        assert!(run("ADD", c, conf(dir.path()), &dp).0);
    }
    dp.effects();
    let mut gc_conf = conf(dir.path());
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    // Without the list GC refuses to run at all.
    let (ok, err) = run("GC", "", conf(dir.path()), &dp);
    assert!(!ok && err["code"] == 7, "{err}");
    assert!(dp.effects().is_empty());

    assert!(run("GC", "", gc_conf.clone(), &dp).0);
    let effects = dp.effects();
    let torn: BTreeSet<String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Teardown { veth, recorded } => {
                assert!(recorded, "GC forgets only after tearing down");
                Some(veth.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(torn, BTreeSet::from([veth("stale"), veth("stuck")]));
    assert_eq!(
        effects.last(),
        Some(&Effect::RemoveStray(BTreeSet::from([veth("live")]))),
        "strays are removed last, sparing the live attachment"
    );
    assert!(dp.recorded(&veth("live")));
    assert!(!dp.recorded(&veth("stale")));

    // A teardown that fails keeps that record (and the others go on).
    assert!(run("ADD", "stale2", conf(dir.path()), &dp).0);
    dp.effects();
    dp.fail_teardown = true;
    assert!(run("GC", "", gc_conf, &dp).0);
    assert!(dp.recorded(&veth("stale2")));
    assert!(
        matches!(dp.effects().last(), Some(Effect::RemoveStray(live)) if live.contains(&veth("stale2")))
    );
}

fn with_ports(dir: &Path, ports: Value) -> Value {
    let mut c = conf(dir);
    c["runtimeConfig"] = json!({ "portMappings": ports });
    c
}

fn tcp(host_port: u16, host_ip: Option<&str>) -> PortMapping {
    PortMapping {
        host_port,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: host_ip.map(|ip| ip.parse().unwrap()),
    }
}

#[test]
fn host_ports_are_recorded_at_add_and_del_uses_the_record() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let dp = Fake::new(dir.path());
    let ports = json!([
        {"hostPort": 54323, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
    ]);
    let (ok, result) = run("ADD", "c1", with_ports(dir.path(), ports.clone()), &dp);
    assert!(ok, "{result}");
    let want = vec![tcp(54323, Some("127.0.0.1")), tcp(8080, None)];
    let recorded = |c: &str| {
        Store::new(dir.path()).snapshot().unwrap().attachments[&format!("{c}/eth0")]
            .port_mappings
            .clone()
    };
    assert_eq!(recorded("c1"), want);
    assert_eq!(dp.host_ports.take(), vec![("setup", want.clone())]);

    // A repeated ADD keeps what the record says, whatever today's configuration says.
    let (ok, _) = run("ADD", "c1", conf(dir.path()), &dp);
    assert!(ok);
    assert_eq!(dp.host_ports.take(), vec![("setup", want.clone())]);

    // DEL without any runtimeConfig (or with a garbled one) removes what ADD mapped.
    let mut garbled = conf(dir.path());
    garbled["runtimeConfig"] = json!({"portMappings": "garbled"});
    let (ok, err) = run("DEL", "c1", garbled, &dp);
    assert!(ok, "{err}");
    assert_eq!(dp.host_ports.take(), vec![("teardown", want)]);
}

#[test]
fn a_host_port_another_pod_holds_is_refused_before_anything_is_set_up() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let dp = Fake::new(dir.path());
    let on_node = |protocol: &str| json!([{"hostPort": 54323, "containerPort": 80, "protocol": protocol, "hostIP": "10.78.0.1"}]);
    assert!(run("ADD", "c1", with_ports(dir.path(), on_node("tcp")), &dp).0);
    // Same port, other protocol or address: no conflict (the conformance spec's pods).
    assert!(run("ADD", "c2", with_ports(dir.path(), on_node("udp")), &dp).0);
    let loopback = json!([{"hostPort": 54323, "containerPort": 80, "hostIP": "127.0.0.1"}]);
    assert!(run("ADD", "c3", with_ports(dir.path(), loopback), &dp).0);
    dp.effects();

    let (ok, err) = run("ADD", "c4", with_ports(dir.path(), on_node("TCP")), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 11, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("host port tcp 54323 on 10.78.0.1 is held by pod default/c1"),
        "{msg}"
    );
    assert!(dp.effects().is_empty(), "nothing set up");
    assert!(
        !dp.recorded(&veth("c4")),
        "nothing recorded, no address held"
    );
    assert_eq!(Store::new(dir.path()).snapshot().unwrap().held(), 3);

    // Once the holder is gone, the port is free.
    assert!(run("DEL", "c1", conf(dir.path()), &dp).0);
    assert!(run("ADD", "c4", with_ports(dir.path(), on_node("tcp")), &dp).0);
}

#[test]
fn bad_port_mappings_fail_add_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let dp = Fake::new(dir.path());
    let bad = json!([{"hostPort": 70000, "containerPort": 80}]);
    let (ok, err) = run("ADD", "c1", with_ports(dir.path(), bad), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 7, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("\"runtimeConfig.portMappings[0].hostPort\""),
        "{err}"
    );
    let (ok, err) = run("ADD", "c1", with_ports(dir.path(), json!({"x": 1})), &dp);
    assert!(!ok);
    assert_eq!(err["code"], 6, "{err}");
    assert!(dp.effects().is_empty());
    assert_eq!(Store::new(dir.path()).snapshot().unwrap().held(), 0);
}
