//! The API server's own figures (its `/metrics`): watch events sent and their bytes, by
//! resource, and how many watches of each resource are open; so the cluster-wide cost of a
//! phase can be read off as the difference of two scrapes.

use std::collections::BTreeMap;

use super::BoxError;

/// Watch events sent to watchers of one resource (every watcher counts: one change seen by
/// ten watchers is ten events).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sent {
    pub events: f64,
    pub bytes: f64,
}

/// One scrape: per resource (`group/resource`, `core/pods`), what was sent so far and the
/// watches open now.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub sent: BTreeMap<String, Sent>,
    pub watches: BTreeMap<String, f64>,
}

impl Scrape {
    /// What was sent between `earlier` and this scrape, per resource.
    pub fn since(&self, earlier: &Scrape) -> BTreeMap<String, Sent> {
        self.sent
            .iter()
            .map(|(r, now)| {
                let before = earlier.sent.get(r).copied().unwrap_or_default();
                (
                    r.clone(),
                    Sent {
                        events: now.events - before.events,
                        bytes: now.bytes - before.bytes,
                    },
                )
            })
            .filter(|(_, s)| s.events > 0.0)
            .collect()
    }
}

/// `GET /metrics` of the API server.
pub async fn scrape(client: &kube::Client) -> Result<Scrape, BoxError> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(parse(&text))
}

/// A sample line: metric name, labels, value.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.trim(), v.trim_end_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

/// `group/resource` of a sample's labels (`core` for the empty group; older API servers
/// label by `kind`).
fn resource(labels: &BTreeMap<&str, &str>) -> Option<String> {
    let what = labels.get("resource").or_else(|| labels.get("kind"))?;
    let group = labels.get("group").copied().unwrap_or_default();
    let group = if group.is_empty() { "core" } else { group };
    Some(format!("{group}/{}", what.to_lowercase()))
}

/// The watch figures of a `/metrics` text.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for (name, labels, value) in text.lines().filter_map(sample) {
        match name {
            "apiserver_watch_events_total" => {
                if let Some(r) = resource(&labels) {
                    s.sent.entry(r).or_default().events += value;
                }
            }
            "apiserver_watch_events_sizes_sum" => {
                if let Some(r) = resource(&labels) {
                    s.sent.entry(r).or_default().bytes += value;
                }
            }
            "apiserver_longrunning_requests" if labels.get("verb") == Some(&"WATCH") => {
                if let Some(r) = resource(&labels) {
                    *s.watches.entry(r).or_default() += value;
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_figures_are_summed_per_resource() {
        let text = r#"# HELP apiserver_watch_events_total Number of events sent in watch clients
apiserver_watch_events_total{group="",resource="pods",version="v1"} 12
apiserver_watch_events_total{group="sinew.dev",resource="ipblocks",version="v1alpha1"} 3
apiserver_watch_events_sizes_sum{group="",resource="pods",version="v1"} 4800
apiserver_watch_events_sizes_count{group="",resource="pods",version="v1"} 12
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="WATCH",version="v1"} 1
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="log",verb="CONNECT",version="v1"} 5
"#;
        let s = parse(text);
        assert_eq!(
            s.sent["core/pods"],
            Sent {
                events: 12.0,
                bytes: 4800.0
            }
        );
        assert_eq!(s.sent["sinew.dev/ipblocks"].events, 3.0);
        assert_eq!(s.watches["core/pods"], 3.0);
        let mut later = s.clone();
        later.sent.get_mut("core/pods").unwrap().events = 20.0;
        let d = later.since(&s);
        assert_eq!(d["core/pods"].events, 8.0);
        assert!(
            !d.contains_key("sinew.dev/ipblocks"),
            "nothing sent: left out"
        );
    }
}
