//! An agent killed with SIGKILL at random instants while the `ClusterNetwork` keeps changing
//! (so the conflist keeps being rewritten): a reader looping on the conf dir never parses a
//! partial conflist, and the file is never missing once the node was ready. (Its own binary:
//! it edits the `ClusterNetwork` singleton.) Needs root and the Go-built control plane.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::{ClusterNetwork, IPPool};
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::{require, tests};

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing("conflist", "nodes are network namespaces, which needs root");
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move { sinew_e2e::operator::agents_setup(&ctx, false).await },
        tests![killed_agents_never_leave_a_partial_conflist],
    );
    sinew_e2e::operator::stop_kept();
    code
}

async fn killed_agents_never_leave_a_partial_conflist(ctx: Ctx) -> TestResult {
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let set_chain = |n: usize| {
        // A chain entry with a large config, so each rewrite takes a while.
        json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "default"},
               "spec": {"cni": {"cniVersion": "1.0.0", "chain": [{"type": "tuning", "config": {"sysctl": {
                   "net.ipv4.conf.eth0.accept_redirects": "0"}, "padding": "x".repeat(200_000 + n)}}]}}})
    };
    networks
        .patch(
            "default",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&set_chain(0)),
        )
        .await?;
    let mut cluster = LocalCluster::start(&ctx.cp, "ck", &[0]).await;
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "ck-pool"},
                      "spec": {"cidr": "10.110.0.0/24", "blockSize": 28, "nodeSelector": {"matchLabels": {CLUSTER_LABEL: "ck"}}}});
    Api::<IPPool>::all(ctx.client.clone())
        .patch(
            "ck-pool",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&pool),
        )
        .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let conflist = cluster.nodes[0].conf_dir().join("10-sinew.conflist");

    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let mut seed: u64 = 0x9e37_79b9 ^ u64::from(std::process::id());
    std::thread::scope(|s| -> TestResult {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let bytes = std::fs::read(&conflist)
                    .unwrap_or_else(|e| panic!("the conflist vanished: {e}"));
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
                assert!(
                    parsed.is_ok(),
                    "read a partial conflist ({} bytes)",
                    bytes.len()
                );
                reads.fetch_add(1, Ordering::SeqCst);
            }
        });
        let runtime = tokio::runtime::Handle::current();
        for n in 1..=12 {
            let patch = set_chain(n);
            std::thread::scope(|inner| {
                inner
                    .spawn(|| {
                        runtime.block_on(networks.patch(
                            "default",
                            &PatchParams::apply("sinew-e2e"),
                            &Patch::Apply(&patch),
                        ))
                    })
                    .join()
            })
            .map_err(|_| "patch thread panicked")??;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(seed % 400));
            cluster.stop_agent(0);
            cluster.restart_agent(0);
            std::thread::sleep(Duration::from_millis(600));
        }
        stop.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    assert!(reads.load(Ordering::SeqCst) > 100, "the reader barely ran");
    // The last agent converges on the last configuration.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&conflist)?;
        if text.contains(&"x".repeat(200_012)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the conflist never caught up with the last change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
