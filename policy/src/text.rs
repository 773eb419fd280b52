//! A plan as text a person can read (and tests can hold as golden text): per direction each
//! class with its pods and policies, then its elements, a range written as a prefix when it
//! is one, each with the rules that produced it.

use std::fmt;
use std::net::IpAddr;

use sinew_core::Cidr;

use crate::plan::{AddrRange, Class, Plan, Reason};
use crate::view::Direction;

/// `10.0.0.0/24`, `10.0.0.7`, or `10.0.0.3-10.0.0.9` when the range is no prefix.
impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            return write!(f, "{}", self.start);
        }
        match as_prefix(self.start, self.end) {
            Some(c) => write!(f, "{c}"),
            None => write!(f, "{}-{}", self.start, self.end),
        }
    }
}

fn as_prefix(start: IpAddr, end: IpAddr) -> Option<Cidr> {
    let bits = match start {
        IpAddr::V4(_) => 32u8,
        IpAddr::V6(_) => 128,
    };
    (0..=bits)
        .filter_map(|len| Cidr::new_truncating(start, len).ok())
        .find(|c| c.network() == start && c.last() == end)
}

impl Plan {
    fn reason_text(&self, r: &Reason) -> String {
        let policy = self
            .policy(r.policy)
            .map_or_else(|| "?".to_string(), |p| p.to_string());
        let mut s = format!("{policy} rule {}", r.rule);
        if let Some(p) = r.peer {
            s.push_str(&format!(" peer {p}"));
        }
        if let Some(p) = r.port {
            s.push_str(&format!(" port {p}"));
        }
        s
    }

    fn reasons_text(&self, rs: &[Reason]) -> String {
        rs.iter()
            .map(|r| self.reason_text(r))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn class_text(
        &self,
        f: &mut fmt::Formatter<'_>,
        d: Direction,
        i: usize,
        c: &Class,
    ) -> fmt::Result {
        let pods: Vec<String> = c.pods.iter().map(|p| p.to_string()).collect();
        let policies: Vec<String> = c
            .policies
            .iter()
            .filter_map(|p| self.policy(*p).map(|k| k.to_string()))
            .collect();
        writeln!(f, "{d} class {i}: pods {}", pods.join(", "))?;
        writeln!(f, "  isolated by {}", policies.join(", "))?;
        if c.failed_closed {
            writeln!(f, "  deny-all (over a limit)")?;
        } else if c.element_count() == 0 {
            writeln!(f, "  nothing allowed")?;
        }
        for els in [&c.v4, &c.v6] {
            for e in &els.any {
                writeln!(
                    f,
                    "  {} all traffic  <- {}",
                    e.addrs,
                    self.reasons_text(c.reasons(e.reasons))
                )?;
            }
            for e in &els.ports {
                let (lo, hi) = e.ports;
                let ports = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                };
                writeln!(
                    f,
                    "  {} {} {ports}  <- {}",
                    e.addrs,
                    e.protocol,
                    self.reasons_text(c.reasons(e.reasons))
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.node)?;
        for d in [Direction::Ingress, Direction::Egress] {
            if self.classes(d).is_empty() {
                writeln!(f, "{d}: no pod isolated")?;
            }
            for (i, c) in self.classes(d).iter().enumerate() {
                self.class_text(f, d, i, c)?;
            }
        }
        for p in &self.problems {
            let policies: Vec<String> = p.policies.iter().map(|k| k.to_string()).collect();
            let pods: Vec<String> = p.pods.iter().map(|k| k.to_string()).collect();
            writeln!(
                f,
                "problem: {} of {} (policies {}): {}",
                p.direction,
                pods.join(", "),
                policies.join(", "),
                p.message
            )?;
        }
        Ok(())
    }
}
