//! Runs a test binary's async tests against one shared control plane.
//!
//! Starting etcd and kube-apiserver takes seconds, so each test binary starts them once, runs
//! its tests in parallel against them (each test uses its own object names) and stops them
//! at the end. Test binaries using this set `harness = false` and call [`run`] from `main`.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::ControlPlane;
use crate::require;

/// The error type of harness tests: anything printable.
pub type TestError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), TestError>;
type BoxFuture = Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// What a test gets: the shared control plane and an admin client.
#[derive(Clone)]
pub struct Ctx {
    pub cp: Arc<ControlPlane>,
    pub client: kube::Client,
}

/// One named async test.
pub struct Test {
    pub name: &'static str,
    pub run: fn(Ctx) -> BoxFuture,
    /// Runs alone (it disturbs what other tests rely on, such as the operator's leadership).
    pub exclusive: bool,
}

/// Builds the list of [`Test`]s from async functions `async fn name(ctx: Ctx) -> TestResult`.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$($crate::harness::Test {
            name: stringify!($name),
            run: |ctx| Box::pin($name(ctx)),
            exclusive: false,
        }),*]
    };
}

/// Starts a control plane, runs `setup` once, then every test. Where the Go-built tools are
/// missing the tests are reported as ignored with the reason (a failure in CI).
pub fn run<S, F>(setup: S, tests: Vec<Test>) -> ExitCode
where
    S: FnOnce(Ctx) -> F,
    F: Future<Output = Result<(), String>>,
{
    let args = Arguments::from_args();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let names = || tests.iter().map(|t| t.name);
    if let Err(e) = crate::tools::Tools::locate() {
        require::missing("control-plane", &e.to_string());
        let trials = names().map(|n| Trial::test(n, || Ok(())).with_ignored_flag(true));
        return exit(libtest_mimic::run(&args, trials.collect()));
    }
    let started = runtime.block_on(async {
        let cp = Arc::new(ControlPlane::start().await.map_err(|e| e.to_string())?);
        let client = cp.client().await.map_err(|e| e.to_string())?;
        let ctx = Ctx { cp, client };
        setup(ctx.clone()).await?;
        Ok::<Ctx, String>(ctx)
    });
    let ctx = match started {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("\n*** control plane setup failed: {e}\n");
            let trials = names().map(|n| {
                Trial::test(n, || {
                    Err(Failed::from("control plane setup failed (reason above)"))
                })
            });
            return exit(libtest_mimic::run(&args, trials.collect()));
        }
    };
    // Tests run in parallel; an exclusive one waits for the others and holds them off.
    let gate = Arc::new(std::sync::RwLock::new(()));
    let trials = tests
        .into_iter()
        .map(|t| {
            let ctx = ctx.clone();
            let runtime = runtime.clone();
            let gate = gate.clone();
            Trial::test(t.name, move || {
                let run = || {
                    runtime
                        .block_on((t.run)(ctx))
                        .map_err(|e| Failed::from(e.to_string()))
                };
                if t.exclusive {
                    let _alone = gate.write().unwrap_or_else(|e| e.into_inner());
                    run()
                } else {
                    let _shared = gate.read().unwrap_or_else(|e| e.into_inner());
                    run()
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(ctx);
    exit(conclusion)
}

fn exit(conclusion: libtest_mimic::Conclusion) -> ExitCode {
    if conclusion.has_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Polls `probe` every 100 ms until it yields a value; after `within`, fails naming `what`,
/// the last probe error and `context()` (e.g. a log tail).
pub async fn wait_for<T, F, Fut>(
    what: &str,
    within: std::time::Duration,
    context: impl Fn() -> String,
    mut probe: F,
) -> Result<T, TestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, TestError>>,
{
    let deadline = std::time::Instant::now() + within;
    let mut last = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        if std::time::Instant::now() > deadline {
            return Err(
                format!("{what} not reached within {within:?} {last}\n{}", context()).into(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
