//! `kubectl sinew drops`: the packets NetworkPolicy dropped, from the drop events the
//! agents log when `ClusterNetwork` `spec.networkPolicyDropLog` is `Enabled` (decision 94).
//! The events are read from the `sinew-node` pods' logs (`pods/log`), so whoever may read
//! those logs may see them; this module parses and prints them.

use serde::Serialize;

/// The message of a drop event, as the agent writes it.
pub const MESSAGE: &str = "policy dropped a packet";
/// The label of the agents' pods.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=sinew-node";
/// The agent's container.
pub const AGENT_CONTAINER: &str = "agent";

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    pub time: String,
    pub node: String,
    pub direction: String,
    pub pod: String,
    pub peer: String,
    pub protocol: String,
    /// `None` for protocols without ports.
    pub port: Option<u16>,
    pub class: String,
    pub policies: String,
    /// Events the agent left out (rate limit) just before this one.
    pub suppressed: u64,
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `key=value` fields after the message (values quoted or not, without spaces).
fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_whitespace().filter_map(|word| {
        let (key, value) = word.split_once('=')?;
        Some((key, value.trim_matches('"')))
    })
}

/// The drop event a log line of the agent on `node` holds, if it holds one.
pub fn parse_line(node: &str, line: &str) -> Option<Drop> {
    let line = plain(line);
    let at = line.find(MESSAGE)?;
    let time = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut drop = Drop {
        time,
        node: node.to_string(),
        direction: String::new(),
        pod: String::new(),
        peer: String::new(),
        protocol: String::new(),
        port: None,
        class: String::new(),
        policies: String::new(),
        suppressed: 0,
    };
    for (key, value) in fields(&line[at + MESSAGE.len()..]) {
        match key {
            "direction" => drop.direction = value.to_string(),
            "pod" => drop.pod = value.to_string(),
            "peer" => drop.peer = value.to_string(),
            "protocol" => drop.protocol = value.to_string(),
            "port" => drop.port = value.parse().ok().filter(|p| *p != 0),
            "class" => drop.class = value.to_string(),
            "policies" => drop.policies = value.to_string(),
            "suppressed" => drop.suppressed = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    (!drop.direction.is_empty()).then_some(drop)
}

/// Every drop event in one agent's log.
pub fn parse_log(node: &str, log: &str) -> Vec<Drop> {
    log.lines().filter_map(|l| parse_line(node, l)).collect()
}

/// `--since`: `30s`, `5m`, `2h`, `1d` as seconds.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let err = || format!("--since {text}: a number with s, m, h or d (30s, 5m, 2h)");
    let split = text.len().checked_sub(1).ok_or_else(err)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| err())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(err()),
    };
    n.checked_mul(scale).filter(|s| *s > 0).ok_or_else(err)
}

/// The drops as a table, oldest first.
pub fn render(drops: &[Drop]) -> String {
    if drops.is_empty() {
        return "no dropped packet logged (is ClusterNetwork spec.networkPolicyDropLog Enabled?)\n"
            .to_string();
    }
    let header = [
        "TIME",
        "NODE",
        "DIRECTION",
        "POD",
        "PEER",
        "PROTO/PORT",
        "POLICIES",
    ];
    let rows: Vec<[String; 7]> = drops
        .iter()
        .map(|d| {
            let port = d
                .port
                .map_or_else(|| d.protocol.clone(), |p| format!("{}/{p}", d.protocol));
            let mut policies = if d.policies.is_empty() {
                format!("({})", d.class)
            } else {
                d.policies.replace(',', ", ")
            };
            if d.suppressed > 0 {
                policies += &format!(" (+{} not logged)", d.suppressed);
            }
            [
                d.time.clone(),
                d.node.clone(),
                d.direction.clone(),
                d.pod.clone(),
                d.peer.clone(),
                port,
                policies,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s += cell;
            } else {
                s += &format!("{cell:<w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "2026-12-07T00:41:02.123456Z  INFO sinew_node_agent::policy::drops: policy dropped a packet direction=ingress pod=default/web-1 peer=10.0.1.3 protocol=tcp port=80 class=ingress-0 policies=default/allow-web,default/other suppressed=0";

    #[test]
    fn drop_events_parse_from_plain_and_coloured_lines() {
        let d = parse_line("node-a", PLAIN).unwrap();
        assert_eq!(
            d,
            Drop {
                time: "2026-12-07T00:41:02.123456Z".into(),
                node: "node-a".into(),
                direction: "ingress".into(),
                pod: "default/web-1".into(),
                peer: "10.0.1.3".into(),
                protocol: "tcp".into(),
                port: Some(80),
                class: "ingress-0".into(),
                policies: "default/allow-web,default/other".into(),
                suppressed: 0,
            }
        );
        // as the agent's coloured output writes it (fields in italics, quoted strings)
        let coloured = "\u{1b}[2m2026-12-07T00:41:02.123456Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2msinew_node_agent::policy::drops\u{1b}[0m\u{1b}[2m:\u{1b}[0m policy dropped a packet \u{1b}[3mdirection\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"egress\" \u{1b}[3mpod\u{1b}[0m\u{1b}[2m=\u{1b}[0mdefault/web-1 \u{1b}[3mpeer\u{1b}[0m\u{1b}[2m=\u{1b}[0mfd00:1::4 \u{1b}[3mprotocol\u{1b}[0m\u{1b}[2m=\u{1b}[0micmpv6 \u{1b}[3mport\u{1b}[0m\u{1b}[2m=\u{1b}[0m0 \u{1b}[3mclass\u{1b}[0m\u{1b}[2m=\u{1b}[0megress-0 \u{1b}[3mpolicies\u{1b}[0m\u{1b}[2m=\u{1b}[0m \u{1b}[3msuppressed\u{1b}[0m\u{1b}[2m=\u{1b}[0m4";
        let d = parse_line("node-b", coloured).unwrap();
        assert_eq!(d.time, "2026-12-07T00:41:02.123456Z");
        assert_eq!(
            (
                d.direction.as_str(),
                d.peer.as_str(),
                d.protocol.as_str(),
                d.port
            ),
            ("egress", "fd00:1::4", "icmpv6", None)
        );
        assert_eq!((d.policies.as_str(), d.suppressed), ("", 4));
        // other lines of the log are not drops
        let log = format!("2026-12-07T00:41:00Z  INFO sinew_node_agent: pass done\n{PLAIN}\n\n");
        assert_eq!(parse_log("node-a", &log).len(), 1);
        assert_eq!(parse_line("n", "policy dropped a packet"), None);
    }

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("30s"), Ok(30));
        assert_eq!(parse_since("5m"), Ok(300));
        assert_eq!(parse_since("2h"), Ok(7200));
        assert_eq!(parse_since("1d"), Ok(86400));
        for bad in ["", "m", "5", "5x", "-5m", "0s"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn drops_print_as_an_aligned_table() {
        let mut d = parse_line("node-a", PLAIN).unwrap();
        let mut e = d.clone();
        e.node = "node-bb".into();
        e.protocol = "icmp".into();
        e.port = None;
        e.policies = String::new();
        e.suppressed = 3;
        d.time = "t1".into();
        e.time = "t2".into();
        assert_eq!(
            render(&[d, e]),
            "TIME  NODE     DIRECTION  POD            PEER      PROTO/PORT  POLICIES
t1    node-a   ingress    default/web-1  10.0.1.3  tcp/80      default/allow-web, default/other
t2    node-bb  ingress    default/web-1  10.0.1.3  icmp        (ingress-0) (+3 not logged)
"
        );
        assert!(render(&[]).contains("networkPolicyDropLog"));
    }
}
