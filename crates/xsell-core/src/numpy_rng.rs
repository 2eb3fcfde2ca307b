//! The random stream of NumPy's `default_rng(seed)`: a PCG64 generator seeded through NumPy's
//! `SeedSequence`, and its `random()` doubles.
//!
//! `PROTOCOL.md` draws the query targets with a generator "seeded 42, NumPy `default_rng(42)`
//! style". Reproducing NumPy's stream bit for bit makes `xsell eval` draw the very queries a
//! Python script (and the peer measurements of the quality issue) draws with
//! `basket[int(rng.random() * len(basket))]`, so figures compare query for query.
//!
//! PCG64 itself is `rand_pcg`'s `Lcg128Xsl64`, whose seeding and output match NumPy's; only
//! the seed hashing of `SeedSequence` (O'Neill's `seed_seq_fe`, as NumPy implements it) is here.

use rand::RngCore;
use rand_pcg::Pcg64;

const POOL_SIZE: usize = 4;
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// `SeedSequence`'s multiplicative hash: each call folds in the next hash constant.
fn hasher(init: u32, mult: u32) -> impl FnMut(u32) -> u32 {
    let mut hash_const = init;
    move |value| {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(mult);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    }
}

/// NumPy's `SeedSequence(seed).generate_state(4, np.uint64)`.
fn seed_sequence_state(seed: u64) -> [u64; 4] {
    // The integer seed as little-endian 32-bit words. NumPy keeps only the nonzero high word,
    // but pads the pool by hashing zeros, so a zero high word hashes the same.
    let entropy = [seed as u32, (seed >> 32) as u32];
    let mut hashmix = hasher(INIT_A, MULT_A);
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                pool[dst] = mix(pool[dst], hashmix(pool[src]));
            }
        }
    }
    // Two entropy words never outnumber the pool, so nothing is left to mix in.
    let mut output = hasher(INIT_B, MULT_B);
    let words: Vec<u32> = (0..2 * POOL_SIZE).map(|i| output(pool[i % POOL_SIZE])).collect();
    std::array::from_fn(|k| u64::from(words[2 * k]) | (u64::from(words[2 * k + 1]) << 32))
}

/// The bit generator of NumPy's `default_rng(seed)`.
pub fn default_rng(seed: u64) -> Pcg64 {
    let s = seed_sequence_state(seed);
    let state = (u128::from(s[0]) << 64) | u128::from(s[1]);
    let stream = (u128::from(s[2]) << 64) | u128::from(s[3]);
    Pcg64::new(state, stream)
}

/// NumPy's `Generator.random()`: a double in `[0, 1)` from the top 53 bits of one output.
pub fn random(rng: &mut Pcg64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// `int(rng.random() * n)`: a uniform index below `n` (`n > 0`), the way a NumPy script picks one.
pub fn index(rng: &mut Pcg64, n: usize) -> usize {
    ((random(rng) * n as f64) as usize).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values printed by NumPy 2.4:
    /// `[int(x) for x in PCG64(seed).random_raw(3)]` and `default_rng(seed).random(3)`.
    #[test]
    fn matches_numpy_default_rng() {
        let cases: [(u64, [u64; 3], [f64; 3]); 3] = [
            (
                42,
                [14276969152011380360, 8095878257575067585, 15838336090824644132],
                [0.7739560485559633, 0.4388784397520523, 0.8585979199113825],
            ),
            (
                0,
                [11749869230777074271, 4976686463289251617, 755828109848996024],
                [0.6369616873214543, 0.2697867137638703, 0.04097352393619469],
            ),
            (
                (1 << 40) + 7,
                [15307346044642009514, 4709548916763817589, 2836937976252648324],
                [0.829812891829413, 0.25530515834910417, 0.15379071585298754],
            ),
        ];
        for (seed, raw, doubles) in cases {
            let mut rng = default_rng(seed);
            let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
            assert_eq!(got, raw, "seed {seed}");
            let mut rng = default_rng(seed);
            let got: Vec<f64> = (0..3).map(|_| random(&mut rng)).collect();
            assert_eq!(got, doubles, "seed {seed}");
        }
    }

    #[test]
    fn seed_sequence_matches_numpy() {
        // `SeedSequence(42).generate_state(4, np.uint64)`
        assert_eq!(seed_sequence_state(42), [0x9f1e2e6dcd540ab7, 0xd57873dc79fb94b6, 0x7d282a1b64d420b7, 0x336579714692d5ff]);
    }

    #[test]
    fn index_stays_in_range() {
        let mut rng = default_rng(7);
        for n in 1..50 {
            assert!(index(&mut rng, n) < n);
        }
    }
}
