//! Deterministic, order-independent train/validation splits.

// SplitMix64: a fixed, well-mixed hash, so splits never change with a library upgrade.
use rrlhf_util::rng::splitmix64;

/// Whether record `index` belongs to the held-out part of size ≈ `fraction` under `seed`.
pub fn is_held_out(seed: u64, index: usize, fraction: f64) -> bool {
    let h = splitmix64(seed ^ splitmix64(index as u64));
    (h as f64 / u64::MAX as f64) < fraction
}

/// Splits `items` into (train, held-out).
pub fn train_test<T>(items: Vec<T>, seed: u64, fraction: f64) -> (Vec<T>, Vec<T>) {
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if is_held_out(seed, i, fraction) {
            test.push(item);
        } else {
            train.push(item);
        }
    }
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_sized() {
        let (a_train, a_test) = train_test((0..10_000).collect(), 3, 0.1);
        let (b_train, b_test) = train_test((0..10_000).collect(), 3, 0.1);
        assert_eq!((a_train.len(), &a_test), (b_train.len(), &b_test));
        assert!((900..1100).contains(&a_test.len()), "{}", a_test.len());
        let (_, other) = train_test((0..10_000).collect::<Vec<_>>(), 4, 0.1);
        assert_ne!(a_test, other, "another seed gives another split");
    }
}
