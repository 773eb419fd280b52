//! A real Kubernetes control plane for tests: etcd and kube-apiserver, built from pinned
//! upstream modules, listening on loopback only, with generated certificates.
//!
//! ```no_run
//! # async fn f() -> Result<(), sinew_e2e::Error> {
//! let cp = sinew_e2e::ControlPlane::start().await?;
//! let client = cp.client().await?;
//! // ... use the API; everything is stopped and removed when `cp` is dropped.
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs::{self, Pki};
use crate::process::Supervised;
use crate::tools::Tools;
use crate::{Error, io_err};

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running etcd + kube-apiserver pair. Dropping it stops both and deletes their data.
pub struct ControlPlane {
    // Field order is drop order: the API server goes before etcd, both before the directory.
    // (A mutex, so that a test can restart the API server of a shared control plane.)
    apiserver: std::sync::Mutex<Option<Supervised>>,
    etcd: Supervised,
    /// The API server's command line, to restart it the same way.
    apiserver_cmd: (PathBuf, Vec<String>),
    url: String,
    kubeconfig_path: PathBuf,
    kubeconfig: Kubeconfig,
    pki: Pki,
    tools: Tools,
    dir: tempfile::TempDir,
}

fn free_port(what: &'static str) -> Result<u16, Error> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err(format!("finding a free port for {what}")))?;
    let port = listener
        .local_addr()
        .map_err(io_err(format!("finding a free port for {what}")))?
        .port();
    Ok(port)
}

fn ensure_free(port: u16, what: &'static str) -> Result<(), Error> {
    match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::PortTaken { port, what }),
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until the API server
    /// reports ready. Fails with the process's own log lines if either exits or hangs.
    pub async fn start() -> Result<ControlPlane, Error> {
        let tools = Tools::locate()?;
        let etcd_bin = tools.path("etcd")?;
        let apiserver_bin = tools.path("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("sinew-cp-")
            .tempdir()
            .map_err(io_err("creating the control plane directory"))?;
        let (pki, _ca) = certs::generate(dir.path())?;

        let etcd_port = free_port("etcd clients")?;
        let peer_port = free_port("etcd peers")?;
        let api_port = free_port("kube-apiserver")?;
        for (port, what) in [
            (etcd_port, "etcd clients"),
            (peer_port, "etcd peers"),
            (api_port, "kube-apiserver"),
        ] {
            ensure_free(port, what)?;
        }

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd_cmd = Command::new(&etcd_bin);
        etcd_cmd.args([
            "--name=sinew-test",
            &format!("--data-dir={}", dir.path().join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-cluster=sinew-test=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let etcd = Supervised::spawn("etcd", etcd_cmd, &dir.path().join("etcd.log"))?;
        wait_for_port(&etcd, etcd_port).await?;

        let url = format!("https://127.0.0.1:{api_port}");
        let api_args = apiserver_args(&pki, &etcd_url, api_port, dir.path());
        let mut api_cmd = Command::new(&apiserver_bin);
        api_cmd.args(&api_args);
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            api_cmd,
            &dir.path().join("kube-apiserver.log"),
        )?;

        let kubeconfig = kubeconfig(&url, &pki, "sinew-test-admin")?;
        let kubeconfig_path = dir.path().join("kubeconfig");
        let yaml =
            serde_yaml::to_string(&kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        std::fs::write(&kubeconfig_path, yaml)
            .map_err(io_err(format!("writing {}", kubeconfig_path.display())))?;

        let cp = ControlPlane {
            apiserver: std::sync::Mutex::new(Some(apiserver)),
            etcd,
            apiserver_cmd: (apiserver_bin, api_args),
            url,
            kubeconfig_path,
            kubeconfig,
            pki,
            tools,
            dir,
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    async fn wait_ready(&self) -> Result<(), Error> {
        let client = self.client().await?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.etcd.try_exit() {
                return Err(self.etcd.exited_error(status));
            }
            if let Ok(guard) = self.apiserver.lock()
                && let Some(api) = guard.as_ref()
                && let Some(status) = api.try_exit()
            {
                return Err(api.exited_error(status));
            }
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("kube-apiserver at {}", self.url),
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: self
                        .apiserver
                        .lock()
                        .ok()
                        .and_then(|a| a.as_ref().map(|a| a.log_tail(20)))
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the API server (every watch and request of every client breaks) and starts it
    /// again on the same port with the same data, then waits until it is ready.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        {
            let mut api = self
                .apiserver
                .lock()
                .map_err(|_| Error::Setup("the API server's supervisor lock is poisoned".into()))?;
            let (bin, args) = &self.apiserver_cmd;
            let mut cmd = Command::new(bin);
            cmd.args(args);
            // The old process is stopped (dropped) before the new one binds its port.
            drop(api.take());
            let log = self.dir.path().join("kube-apiserver-restarted.log");
            *api = Some(Supervised::spawn("kube-apiserver", cmd, &log)?);
        }
        self.wait_ready().await
    }

    /// A client with cluster-admin rights.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let config = self.config().await?;
        kube::Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
    }

    /// The cluster-admin client configuration.
    pub async fn config(&self) -> Result<kube::Config, Error> {
        kube::Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))
    }

    /// Path of a kubeconfig file with cluster-admin rights (for kubectl, helm, agents).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// PEM of the CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The Go-built tools this control plane came from (kubectl is among them).
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The API server's process id (while it runs) and etcd's, for their memory and CPU.
    pub fn pids(&self) -> (Option<i32>, i32) {
        let api = self
            .apiserver
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(Supervised::pid));
        (api, self.etcd.pid())
    }

    /// Scratch directory removed together with the control plane.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn apiserver_args(pki: &Pki, etcd_url: &str, port: u16, dir: &Path) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", p(&pki.serving_cert)),
        format!("--tls-private-key-file={}", p(&pki.serving_key)),
        format!("--client-ca-file={}", p(&pki.ca_cert)),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", p(&pki.service_account_pub)),
        format!(
            "--service-account-signing-key-file={}",
            p(&pki.service_account_key)
        ),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        // Only a setting: no traffic is ever sent to this range (no kube-proxy runs).
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        // No controller-manager runs, so nobody would create the namespaces' default
        // ServiceAccounts that this admission plugin insists on.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn kubeconfig(url: &str, pki: &Pki, user: &str) -> Result<Kubeconfig, Error> {
    let yaml = format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: sinew-test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: sinew-test
  context:
    cluster: sinew-test
    user: {user}
current-context: sinew-test
"#,
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    Kubeconfig::from_yaml(&yaml).map_err(|e| Error::Kubeconfig(e.to_string()))
}

async fn wait_for_port(process: &Supervised, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = process.try_exit() {
            return Err(process.exited_error(status));
        }
        if TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{} on port {port}", process.name()),
                secs: START_TIMEOUT.as_secs(),
                log_tail: process.log_tail(20),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
