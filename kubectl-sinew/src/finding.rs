//! What every command reports: findings, worst first, for a terminal or as JSON.

use std::fmt::Write as _;

use serde::Serialize;
use sinew_crds::node::{Problem, Severity};

/// One thing that is wrong, where, why, what shows it and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `node/NAME`, `pool/NAME`, `ipblock/NAME`, `pod/NS/NAME` or `cluster`.
    pub scope: String,
    pub kind: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(severity: Severity, scope: String, kind: &str, message: String) -> Finding {
        Finding {
            severity,
            scope,
            kind: kind.to_string(),
            message,
            evidence: Vec::new(),
            fix: None,
        }
    }

    pub fn from_problem(scope: String, p: &Problem) -> Finding {
        Finding {
            severity: p.kind.severity(),
            scope,
            kind: p.kind.to_string(),
            message: p.message.clone(),
            evidence: p.evidence.clone(),
            fix: p.fix.clone(),
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }

    pub fn evidence(mut self, evidence: Vec<String>) -> Finding {
        self.evidence = evidence;
        self
    }
}

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    }
}

/// The findings as text, worst first; `ok` is printed when there are none.
pub fn render(findings: &[Finding], ok: &str) -> String {
    let mut sorted = findings.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return format!("{ok}\n");
    }
    let mut out = String::new();
    for f in &sorted {
        let _ = writeln!(out, "{:<8} {}  {}", label(f.severity), f.scope, f.kind);
        let _ = writeln!(out, "         {}", f.message);
        for e in &f.evidence {
            let _ = writeln!(out, "         evidence: {e}");
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "         fix: {fix}");
        }
    }
    let count = |s| sorted.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} critical, {} warning(s), {} info",
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    );
    out
}

/// Exit status: 1 when anything critical or a warning was found, 0 otherwise.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.severity != Severity::Info))
}
