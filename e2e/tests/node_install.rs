//! `sinew-node install` killed at random instants while readers watch the target: a reader
//! never sees a partial file, and a loop exec'ing the installed plugin never fails while it is
//! being replaced (no ETXTBSY, no half-copied binary).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sinew_e2e::plugin::{sinew_binary, workspace_binary};

fn install(node_bin: &Path, source: &Path, bin_dir: &Path) -> std::process::Child {
    Command::new(node_bin)
        .arg("install")
        .env("SINEW_PLUGIN", source)
        .env("SINEW_CNI_BIN_DIR", bin_dir)
        .env("SINEW_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning sinew-node install")
}

/// Two different, complete versions of the plugin: the real binary and a copy with a trailer
/// (still a valid executable).
fn two_versions(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let a = std::fs::read(sinew_binary()).expect("plugin binary");
    let mut b = a.clone();
    b.extend_from_slice(&[0u8; 4096]);
    std::fs::write(dir.join("v1"), &a).expect("v1");
    std::fs::write(dir.join("v2"), &b).expect("v2");
    (a, b)
}

#[test]
fn killed_installs_never_expose_a_partial_binary_and_exec_never_fails() {
    let node_bin = workspace_binary("sinew-node-agent", "sinew-node");
    let work = tempfile::tempdir().expect("temp dir");
    let (v1, v2) = two_versions(work.path());
    let bin_dir = work.path().join("bin");
    let target = bin_dir.join("sinew");
    assert!(
        install(&node_bin, &work.path().join("v1"), &bin_dir)
            .wait()
            .expect("install")
            .success()
    );

    let stop = AtomicBool::new(false);
    let (reads, execs) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        // Reader: the file is always one whole version.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = std::fs::read(&target) {
                    assert!(
                        bytes == v1 || bytes == v2,
                        "read a partial binary ({} bytes)",
                        bytes.len()
                    );
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // Executor: the runtime's view, exec'ing the plugin while it is replaced.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let out = Command::new(&target)
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap_or_else(|e| panic!("exec of the installed plugin failed: {e}"));
                assert!(
                    out.status.success(),
                    "the plugin failed while being replaced"
                );
                assert!(String::from_utf8_lossy(&out.stdout).contains("supportedVersions"));
                execs.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut seed: u64 = 0x1234_5678 ^ u64::from(std::process::id());
        // At least 150 killed installs, and on until the readers saw enough of them (a loaded
        // machine runs fewer reads and execs per install), bounded in time.
        let started = std::time::Instant::now();
        for i in 0.. {
            let enough =
                i >= 150 && reads.load(Ordering::SeqCst) > 100 && execs.load(Ordering::SeqCst) > 10;
            if enough || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let source = work.path().join(if i % 2 == 0 { "v2" } else { "v1" });
            let mut child = install(&node_bin, &source, &bin_dir);
            std::thread::sleep(Duration::from_micros(seed % 3000));
            let _ = child.kill();
            let _ = child.wait();
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(reads.load(Ordering::SeqCst) > 100 && execs.load(Ordering::SeqCst) > 10);
    // A completed install sweeps the temporaries that killed ones left behind.
    assert!(
        install(&node_bin, &work.path().join("v1"), &bin_dir)
            .wait()
            .expect("install")
            .success()
    );
    let left: Vec<String> = std::fs::read_dir(&bin_dir)
        .expect("bin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["sinew".to_string()]);
    assert_eq!(std::fs::read(&target).expect("installed"), v1);
}
