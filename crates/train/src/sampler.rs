//! Reproducible example order for training loops.

use rrlhf_util::rng::XorShift64Star;

/// Epoch-wise shuffled example order, reproducible from the seed.
pub struct Order {
    perm: Vec<usize>,
    pos: usize,
    rng: XorShift64Star,
}

impl Order {
    pub fn new(n: usize, seed: u64) -> Self {
        let mut o = Self {
            perm: (0..n).collect(),
            pos: n,
            rng: XorShift64Star::new(seed),
        };
        o.reshuffle();
        o
    }

    fn reshuffle(&mut self) {
        for i in (1..self.perm.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            self.perm.swap(i, j);
        }
        self.pos = 0;
    }

    /// The next index; every index appears once per epoch.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> usize {
        if self.pos == self.perm.len() {
            self.reshuffle();
        }
        self.pos += 1;
        self.perm[self.pos - 1]
    }
}
