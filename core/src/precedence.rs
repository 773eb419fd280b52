//! Which of two overlapping objects wins: two `IPPool`s whose CIDRs overlap, or two `IPBlock`s
//! of such pools. The operator refuses the pool that loses, and every node agent treats it as
//! conflicted and ignores the block that loses: they must pick the same one, so the rule is
//! written once, here.
//!
//! The rule: the object created first wins; of two created at the same instant, the one whose
//! name sorts first. Creation times compare as instants, never as their text: an RFC 3339 text
//! with a fraction (`…:00.5Z`) sorts before the whole second it follows (`…:00Z`).

/// Where an object stands in creation order: of two overlapping objects, the lower one wins.
///
/// `T` is the creation time as a typed, totally ordered instant. An object without one (the
/// API server always sets it on the objects it stores) counts as created before every other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CreationOrder<T> {
    // Field order is the comparison order (derived `Ord`): time first, then name.
    created: Option<T>,
    name: String,
}

impl<T: Ord> CreationOrder<T> {
    pub fn new(created: Option<T>, name: impl Into<String>) -> Self {
        CreationOrder {
            created,
            name: name.into(),
        }
    }

    /// Whether this object wins an overlap with `other` (it was there first).
    pub fn precedes(&self, other: &Self) -> bool {
        self < other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An instant as seconds and nanoseconds after some epoch (a typed time of its own).
    fn at(seconds: u64, nanos: u32, name: &str) -> CreationOrder<Duration> {
        CreationOrder::new(Some(Duration::new(seconds, nanos)), name)
    }

    #[test]
    fn the_object_created_first_wins_even_within_one_second() {
        let whole = at(10, 0, "b");
        let quarter = at(10, 250_000_000, "a");
        let half = at(10, 500_000_000, "a");
        assert!(whole.precedes(&quarter));
        assert!(quarter.precedes(&half));
        assert!(!half.precedes(&whole));
        // Their RFC 3339 texts sort the other way round: a fraction sorts before `Z`.
        assert!("2026-01-01T00:00:10.5Z" < "2026-01-01T00:00:10Z");
        let mut sorted = vec![half.clone(), whole.clone(), quarter.clone()];
        sorted.sort();
        assert_eq!(sorted, [whole, quarter, half]);
    }

    #[test]
    fn at_the_same_instant_the_name_decides_and_no_time_counts_as_first() {
        assert!(at(10, 0, "a").precedes(&at(10, 0, "b")));
        assert!(!at(10, 0, "b").precedes(&at(10, 0, "a")));
        assert!(!at(10, 0, "a").precedes(&at(10, 0, "a")), "not itself");
        // The time decides before the name does.
        assert!(at(9, 999_999_999, "z").precedes(&at(10, 0, "a")));
        let untimed = CreationOrder::<Duration>::new(None, "z");
        assert!(untimed.precedes(&at(0, 0, "a")));
    }
}
