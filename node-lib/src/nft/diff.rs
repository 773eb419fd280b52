//! What turns one table of the model into another without rebuilding it: [`diff`] lists the
//! changes in the order one nf_tables transaction must make them, so a table can follow
//! small edits (a pod's interface, a class's elements) while the rest keeps working.
//!
//! Objects are compared by name. A set keeps its elements where it can: elements removed and
//! added, never the set rebuilt, unless its type or flags change. A chain whose rules differ
//! is flushed and refilled; a chain whose hook or comment differs is deleted and created
//! again (the kernel keeps a chain's comment from its creation), and so are then every rule
//! and map element that jump to it. Elements of an interval set must be disjoint, as the
//! kernel requires anyway. A named counter that stays is never touched, so it keeps
//! counting across changes; one that goes is deleted once no rule counts into it.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Chain, Element, Rule, Set, Table, Value};

/// One step from a table to another, in batch order (see [`diff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create this named counter (at zero).
    AddCounter(String),
    /// Create this chain, without rules (they come with [`Change::AddRules`]).
    AddChain(Chain),
    /// Delete every rule of this chain.
    FlushChain(String),
    /// Delete these elements (the set as declared, holding only them).
    DeleteElements(Set),
    /// Delete this set or map with its elements.
    DeleteSet(String),
    /// Create this set or map with its elements.
    AddSet(Set),
    /// Add these elements (the set as declared, holding only them).
    AddElements(Set),
    /// Append these rules to this chain.
    AddRules { chain: String, rules: Vec<Rule> },
    /// Delete this chain (by now without rules, and nothing jumps to it).
    DeleteChain(String),
    /// Delete this named counter (by now no rule counts into it).
    DeleteCounter(String),
}

/// The changes that turn `old` into `new` (tables of the same name), in the order one batch
/// applies them: new counters created; new chains created (so anything may jump to them); changed and departing
/// chains flushed (releasing their jumps and lookups); elements removed; sets deleted;
/// departing chains deleted (nothing refers to them any more); departing counters deleted;
/// sets created; elements added;
/// rules added. Empty when the tables are equal.
pub fn diff(old: &Table, new: &Table) -> Vec<Change> {
    let old_sets: BTreeMap<&str, &Set> = old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: BTreeMap<&str, &Set> = new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let old_chains: BTreeMap<&str, &Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();

    // Sets deleted, and sets created (a set whose definition changed is both).
    let kept_set = |s: &Set| {
        old_sets
            .get(s.name.as_str())
            .is_some_and(|o| o.same_definition(s))
    };
    let deleted_sets: Vec<&str> = old
        .sets
        .iter()
        .filter(|o| {
            new_sets
                .get(o.name.as_str())
                .is_none_or(|n| !n.same_definition(o))
        })
        .map(|o| o.name.as_str())
        .collect();
    let created_sets: Vec<&Set> = new.sets.iter().filter(|s| !kept_set(s)).collect();
    let redefined: BTreeSet<&str> = created_sets
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| old_sets.contains_key(n))
        .collect();

    // Chains deleted, and chains created (a chain whose hook or comment changed is both).
    let kept_chain = |c: &Chain| {
        old_chains
            .get(c.name.as_str())
            .is_some_and(|o| o.same_definition(c))
    };
    let new_chain_names: BTreeMap<&str, &Chain> =
        new.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let deleted_chains: Vec<&str> = old
        .chains
        .iter()
        .filter(|o| {
            new_chain_names
                .get(o.name.as_str())
                .is_none_or(|n| !n.same_definition(o))
        })
        .map(|o| o.name.as_str())
        .collect();
    let created_chains: Vec<&Chain> = new.chains.iter().filter(|c| !kept_chain(c)).collect();
    let recreated: BTreeSet<&str> = created_chains
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| old_chains.contains_key(n))
        .collect();

    // Kept chains refilled: their rules differ, or read a recreated set, or jump to a
    // recreated chain (both hold references the deletion needs released).
    let refers_to_recreated = |rules: &[Rule]| {
        rules.iter().flat_map(|r| &r.exprs).any(|e| {
            e.set().is_some_and(|s| redefined.contains(s))
                || e.jumps_to().is_some_and(|c| recreated.contains(c))
        })
    };
    let refilled: Vec<&Chain> = new
        .chains
        .iter()
        .filter(|c| kept_chain(c))
        .filter(|c| {
            let old = old_chains.get(c.name.as_str()).map(|o| o.rules.as_slice());
            old != Some(c.rules.as_slice()) || refers_to_recreated(&c.rules)
        })
        .collect();

    // Elements of kept sets: removed and added; an element jumping to a recreated chain is
    // taken out and put back.
    let jumps_to_recreated = |e: &Element| {
        e.data.iter().any(|v| match v {
            Value::Verdict(v) => v.chain().is_some_and(|c| recreated.contains(c)),
            _ => false,
        })
    };
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for set in new.sets.iter().filter(|s| kept_set(s)) {
        let Some(old) = old_sets.get(set.name.as_str()) else {
            continue;
        };
        let before: BTreeSet<&Element> = old.elements.iter().collect();
        let after: BTreeSet<&Element> = set.elements.iter().collect();
        let gone: Vec<Element> = old
            .elements
            .iter()
            .filter(|e| !after.contains(e) || jumps_to_recreated(e))
            .cloned()
            .collect();
        let come: Vec<Element> = set
            .elements
            .iter()
            .filter(|e| !before.contains(e) || jumps_to_recreated(e))
            .cloned()
            .collect();
        if !gone.is_empty() {
            removed.push(Change::DeleteElements(set.clone().with_elements(gone)));
        }
        if !come.is_empty() {
            added.push(Change::AddElements(set.clone().with_elements(come)));
        }
    }

    let mut changes: Vec<Change> = new
        .counters
        .iter()
        .filter(|c| !old.counters.contains(c))
        .map(|c| Change::AddCounter(c.clone()))
        .collect();
    for chain in created_chains
        .iter()
        .filter(|c| !recreated.contains(c.name.as_str()))
    {
        changes.push(Change::AddChain(without_rules(chain)));
    }
    let flushed = refilled
        .iter()
        .map(|c| c.name.as_str())
        .chain(deleted_chains.iter().copied());
    for name in flushed {
        let had_rules = old_chains.get(name).is_some_and(|c| !c.rules.is_empty());
        if had_rules {
            changes.push(Change::FlushChain(name.to_string()));
        }
    }
    changes.extend(removed);
    changes.extend(
        deleted_sets
            .iter()
            .map(|s| Change::DeleteSet(s.to_string())),
    );
    changes.extend(
        deleted_chains
            .iter()
            .map(|c| Change::DeleteChain(c.to_string())),
    );
    changes.extend(
        old.counters
            .iter()
            .filter(|c| !new.counters.contains(c))
            .map(|c| Change::DeleteCounter(c.clone())),
    );
    for chain in created_chains
        .iter()
        .filter(|c| recreated.contains(c.name.as_str()))
    {
        changes.push(Change::AddChain(without_rules(chain)));
    }
    changes.extend(created_sets.into_iter().cloned().map(Change::AddSet));
    changes.extend(added);
    for chain in new.chains.iter() {
        let fill = created_chains.iter().any(|c| c.name == chain.name)
            || refilled.iter().any(|c| c.name == chain.name);
        if fill && !chain.rules.is_empty() {
            changes.push(Change::AddRules {
                chain: chain.name.clone(),
                rules: chain.rules.clone(),
            });
        }
    }
    changes
}

fn without_rules(chain: &Chain) -> Chain {
    Chain {
        rules: Vec::new(),
        ..chain.clone()
    }
}

#[cfg(test)]
mod tests;
