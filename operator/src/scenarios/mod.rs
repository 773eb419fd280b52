//! Mock-API scenario tests of the reconcilers' finalizer, drain and clean-up branches and of
//! the leak GC. The kube `Client` talks to a `tower_test` mock service; a task plays the API
//! server's side of one scenario: it checks each request the operator sends (method, path,
//! query, body), in order, and answers it with JSON. Whatever the operator sends after the
//! scripted requests is answered with a 500 and reported by [`Scenario::finish`], so a test
//! proves both the writes it expects and that there are no others. (The tests against a real
//! API server stay in the e2e crate.)

mod gc;
mod network;
mod pool;
mod uninstall;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport};
use sinew_crds::{ClusterNetwork, IPBlock, IPBlockUsage, IPPool};

use crate::context::{Context, Settings};
use crate::pod_uids::PodUids;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Namespace of the operator (and of the node agent DaemonSet) in these scenarios.
pub const NAMESPACE: &str = "sinew-system";
/// The usages' collection.
pub const USAGES: &str = "/apis/sinew.dev/v1alpha1/ipblockusages";
/// How long a test waits for any one step before it calls the operator stuck.
const STEP: Duration = Duration::from_secs(10);

/// What the caches hold when the reconcile runs.
#[derive(Default)]
pub struct World {
    pub nodes: Vec<Node>,
    pub networks: Vec<ClusterNetwork>,
    pub pools: Vec<IPPool>,
    pub blocks: Vec<IPBlock>,
    pub usages: Vec<IPBlockUsage>,
    /// UIDs of the pods that exist.
    pub pods: Vec<&'static str>,
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    store
}

impl World {
    /// Adds blocks, each with its usage.
    pub fn with_claims(mut self, claims: Vec<(IPBlock, IPBlockUsage)>) -> World {
        for (block, usage) in claims {
            self.blocks.push(block);
            self.usages.push(usage);
        }
        self
    }

    /// The reconcile context over a mocked API server, and the server's side of it.
    pub fn build(self) -> (Arc<Context>, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let ctx = Context {
            client: client.clone(),
            settings: Settings {
                namespace: NAMESPACE.into(),
                daemonset: crate::daemonset::Settings {
                    namespace: NAMESPACE.into(),
                    default_image: "example.invalid/sinew-node:test".into(),
                    pull_secrets: Vec::new(),
                },
            },
            // As the operator's own cache holds them: read from the Node's JSON, pruned.
            nodes: store_of(self.nodes.iter().map(kept).collect()),
            networks: store_of(self.networks),
            pools: store_of(self.pools),
            blocks: store_of(self.blocks),
            // As the operator's own cache holds them: counts, no allocations.
            usages: store_of(
                self.usages
                    .into_iter()
                    .map(|mut u| {
                        crate::run::prune_usage(&mut u);
                        u
                    })
                    .collect(),
            ),
            pods: PodUids::fixed(self.pods),
            service_cidrs: store_of(Vec::new()),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "sinew-operator".into(),
                    instance: None,
                },
            ),
            metrics: Arc::new(crate::http::Metrics::default()),
            usage: Default::default(),
            status_writes: Default::default(),
        };
        (
            Arc::new(ctx),
            ApiServer {
                handle,
                received: Arc::default(),
            },
        )
    }
}

/// One request as the API server received it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

impl Seen {
    /// `METHOD path?query body`, the body cut short: for failure messages.
    fn summary(&self) -> String {
        let body = self.body.to_string();
        let cut: String = body.chars().take(300).collect();
        let more = if cut.len() < body.len() { "…" } else { "" };
        format!("{} {} {:?} {cut}{more}", self.method, self.path, self.query)
    }
}

/// The API server's side of a scenario.
pub struct ApiServer {
    handle: Handle,
    received: Arc<AtomicUsize>,
}

impl ApiServer {
    /// How many requests have come so far (to check that a step wrote nothing).
    pub fn received(&self) -> Arc<AtomicUsize> {
        self.received.clone()
    }

    /// Takes the next request, which must be `method path`, and answers `code` with `reply`.
    pub async fn expect(&mut self, method: Method, path: &str, code: u16, reply: Value) -> Seen {
        self.expect_with(method, path, code, |_| reply).await
    }

    /// Takes the next request, which must read the usage of `usage`'s block live (the cache
    /// holds counts only), and answers with it.
    pub async fn expect_usage(&mut self, usage: &IPBlockUsage) {
        let path = format!(
            "{USAGES}/{}",
            usage.metadata.name.as_deref().unwrap_or_default()
        );
        self.expect(Method::GET, &path, 200, to_json(usage)).await;
    }

    /// Takes the next request, which must be the GC's live list of usages (one page), and
    /// answers with `usages`.
    pub async fn expect_usage_list(&mut self, usages: &[IPBlockUsage]) {
        self.expect_usage_page(usages, None, None).await;
    }

    /// Takes the next request, which must ask for the page of usages after `after` (a
    /// continue token; `None`: the first), and answers with `usages` and `next`.
    pub async fn expect_usage_page(
        &mut self,
        usages: &[IPBlockUsage],
        after: Option<&str>,
        next: Option<&str>,
    ) {
        let list = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsageList",
                          "metadata": {"resourceVersion": "7", "continue": next}, "items": usages});
        let seen = self.expect(Method::GET, USAGES, 200, list).await;
        assert_eq!(seen.query.get("limit").map(String::as_str), Some("200"));
        assert_eq!(seen.query.get("continue").map(String::as_str), after);
    }

    /// Takes the next request, which must create an Event in `default` (where the events of
    /// cluster-scoped objects go), and answers with the event as sent.
    pub async fn expect_event(&mut self) -> Seen {
        let path = "/apis/events.k8s.io/v1/namespaces/default/events";
        self.expect_with(Method::POST, path, 201, |seen| seen.body.clone())
            .await
    }

    /// Takes the next request, which must be `method path`, and answers `code` with what
    /// `reply` makes of it.
    pub async fn expect_with(
        &mut self,
        method: Method,
        path: &str,
        code: u16,
        reply: impl FnOnce(&Seen) -> Value,
    ) -> Seen {
        let (request, respond) = tokio::time::timeout(STEP, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("the operator stopped; expected {method} {path}"));
        self.received.fetch_add(1, Ordering::SeqCst);
        let seen = read(request).await;
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "expected {method} {path}, got {}",
            seen.summary()
        );
        respond.send_response(answer(code, &reply(&seen)));
        seen
    }

    /// Starts playing `script` against the operator; see [`Scenario::finish`].
    pub fn play<F, Fut>(self, script: F) -> Scenario
    where
        F: FnOnce(ApiServer) -> Fut + Send + 'static,
        Fut: Future<Output = ApiServer> + Send + 'static,
    {
        Scenario {
            task: tokio::spawn(async move {
                let mut server = script(self).await;
                // Anything after the script is unexpected: refuse it and remember it.
                let mut extra = Vec::new();
                while let Some((request, respond)) = server.handle.next_request().await {
                    server.received.fetch_add(1, Ordering::SeqCst);
                    let seen = read(request).await;
                    extra.push(seen.summary());
                    respond.send_response(answer(500, &status(500, "InternalError")));
                }
                extra
            }),
        }
    }
}

/// A scenario being played.
pub struct Scenario {
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Scenario {
    /// Ends the scenario once the operator is done: drops `ctx` (the last client, which ends
    /// the mock service), then checks that the script ran to its end and that no request came
    /// beyond it.
    pub async fn finish(self, ctx: Arc<Context>) {
        drop(ctx);
        let extra = match tokio::time::timeout(STEP, self.task).await {
            Err(_) => panic!("the scenario did not end (a client is still alive?)"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("the scenario task failed: {e}"),
            Ok(Ok(extra)) => extra,
        };
        assert!(extra.is_empty(), "requests beyond the scenario: {extra:#?}");
    }
}

/// Runs `operation` (a reconcile or a GC pass) with a time limit.
pub async fn within<T>(operation: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, operation)
        .await
        .expect("the operator got stuck")
}

async fn read(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("a readable body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    let query = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body,
    }
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("a percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

fn answer(code: u16, reply: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(reply).expect("JSON")))
        .expect("a response")
}

/// A `metav1.Status` as the API server sends for errors.
pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// The 404 of an object that is not there.
pub fn not_found() -> Value {
    status(404, "NotFound")
}

/// An object as JSON (what the API server answers a write with).
pub fn to_json<K: serde::Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("JSON")
}

/// `node` as the operator's cache holds it: read from its JSON, pruned.
pub fn kept(node: &Node) -> sinew_runtime::node::NodeFacts {
    let mut kept: sinew_runtime::node::NodeFacts =
        serde_json::from_value(to_json(node)).expect("a Node's JSON");
    sinew_runtime::node::prune(&mut kept);
    kept
}

/// A node named `name` whose agent wrote `report` (none: it never reported).
pub fn node(name: &str, report: Option<NodeReport>) -> Node {
    let mut node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
    }))
    .expect("a Node");
    if let Some(r) = report {
        node.metadata.annotations = Some(
            [(NODE_STATE_ANNOTATION.to_string(), r.to_annotation())]
                .into_iter()
                .collect(),
        );
    }
    node
}

/// The `deletionTimestamp` of an object deleted `ago`.
/// A pool's spec as `kubectl apply` leaves it with only `cidr` set (the CRD's defaults).
pub fn pool_spec(cidr: &str) -> sinew_crds::IPPoolSpec {
    sinew_crds::IPPoolSpec {
        cidr: cidr.into(),
        block_size: None,
        mode: Default::default(),
        nat_outgoing: true,
        node_selector: None,
        disabled: false,
        reserved: Vec::new(),
    }
}

pub fn deleted(ago: Duration) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    let ago = k8s_openapi::jiff::SignedDuration::try_from(ago).expect("a duration");
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now - ago)
}

/// The `Ready` condition of a status body the operator wrote.
pub fn ready_condition(body: &Value) -> &Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition in {body}"))
}

#[test]
fn query_components_are_percent_decoded() {
    assert_eq!(decode("spec.pool%3Dp"), "spec.pool=p");
    assert_eq!(decode("a+b%2Fc"), "a b/c");
}
