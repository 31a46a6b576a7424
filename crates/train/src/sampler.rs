//! Reproducible example order for training loops.

/// Epoch-wise shuffled example order, reproducible from the seed.
pub struct Order {
    perm: Vec<usize>,
    pos: usize,
    state: u64,
}

impl Order {
    pub fn new(n: usize, seed: u64) -> Self {
        let mut o = Self {
            perm: (0..n).collect(),
            pos: n,
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
        };
        o.reshuffle();
        o
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: tiny, fixed forever, good enough for shuffling.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn reshuffle(&mut self) {
        for i in (1..self.perm.len()).rev() {
            let j = (self.rand() % (i as u64 + 1)) as usize;
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
