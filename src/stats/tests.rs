use super::*;

/// |actual - expected| <= 1e-9 * |expected|, or <= 1e-12 absolute for tiny values.
fn close(actual: f64, expected: f64) -> bool {
    let diff = (actual - expected).abs();
    diff <= 1e-9 * expected.abs() || diff <= 1e-12
}

/// Relative only, for reference values far below 1e-12.
fn close_rel(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= 1e-9 * expected.abs()
}

#[track_caller]
fn assert_close(actual: f64, expected: f64) {
    assert!(
        close(actual, expected),
        "actual {actual:e} != expected {expected:e}"
    );
}

#[track_caller]
fn assert_ci(actual: Option<(f64, f64)>, expected: (f64, f64)) {
    let (lo, hi) = actual.expect("interval");
    assert_close(lo, expected.0);
    assert_close(hi, expected.1);
}

/// Deterministic generator of differences in -4..=4, mirrored in Python as
/// ```python
/// def lcg(seed, n):
///     s, out = seed, []
///     for _ in range(n):
///         s = (s * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
///         out.append([-4, -3, -2, -1, 0, 0, 1, 2, 3, 4][(s >> 33) % 10])
///     return out
/// ```
fn lcg_diffs(seed: u64, n: usize) -> Vec<i64> {
    const TABLE: [i64; 10] = [-4, -3, -2, -1, 0, 0, 1, 2, 3, 4];
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            TABLE[((s >> 33) % 10) as usize]
        })
        .collect()
}

/// Brute force: enumerate all 2^k sign patterns of the nonzero differences.
fn brute_force_permutation(diffs: &[i64]) -> f64 {
    let nz: Vec<i64> = diffs.iter().copied().filter(|&d| d != 0).collect();
    let t_obs: i64 = diffs.iter().sum::<i64>().abs();
    let k = nz.len();
    let mut hits = 0u64;
    for mask in 0u64..(1 << k) {
        let t: i64 = nz
            .iter()
            .enumerate()
            .map(|(i, &d)| if mask >> i & 1 == 1 { d } else { -d })
            .sum();
        if t.abs() >= t_obs {
            hits += 1;
        }
    }
    hits as f64 / (1u64 << k) as f64
}

// ---------------------------------------------------------------- Wilson

#[test]
fn wilson_none_cases() {
    assert_eq!(wilson_ci95(0, 0), None);
    assert_eq!(wilson_ci(0, 0, 1.0), None);
    assert_eq!(wilson_ci95(5, 4), None);
    assert_eq!(wilson_ci(1, 2, f64::NAN), None);
    assert_eq!(wilson_ci(1, 2, f64::INFINITY), None);
}

#[test]
fn wilson_matches_statsmodels() {
    // Each reference: statsmodels.stats.proportion.proportion_confint(k, n, alpha=0.05,
    // method="wilson") (statsmodels 0.15.0).
    let cases: [(u64, u64, (f64, f64)); 8] = [
        (7, 20, (0.18119182410108203, 0.5671457233147638)),
        (3, 15, (0.07047549346981555, 0.45185448715169363)),
        (500, 1000, (0.4690696003681042, 0.5309303996318958)),
        (1, 10000, (1.7652673601122363e-05, 0.0005662688974013383)),
        // zero successes
        (0, 10, (0.0, 0.27753279986288926)),
        (0, 1, (0.0, 0.7934506856227627)),
        // all successes
        (10, 10, (0.7224672001371106, 1.0)),
        (1, 1, (0.2065493143772374, 1.0)),
    ];
    for (k, n, expected) in cases {
        assert_ci(wilson_ci95(k, n), expected);
        assert_ci(wilson_ci(k, n, 1.959963984540054), expected);
    }
    // statsmodels.stats.proportion.proportion_confint(7, 20, alpha=0.10, method="wilson");
    // z = scipy.stats.norm.ppf(0.95) = 1.6448536269514722.
    assert_ci(
        wilson_ci(7, 20, 1.6448536269514722),
        (0.202260040056761, 0.5334873111515284),
    );
}

#[test]
fn wilson_exact_edges_and_symmetry() {
    let (lo, hi) = wilson_ci95(0, 37).unwrap();
    assert_eq!(lo, 0.0);
    assert!(hi > 0.0 && hi < 1.0);
    let (lo, hi) = wilson_ci95(37, 37).unwrap();
    assert_eq!(hi, 1.0);
    assert!(lo > 0.0 && lo < 1.0);
    for n in 1..60u64 {
        for k in 0..=n {
            let (lo, hi) = wilson_ci95(k, n).unwrap();
            let p = k as f64 / n as f64;
            assert!(0.0 <= lo && lo <= p && p <= hi && hi <= 1.0, "k={k} n={n}");
            // Interval for failures mirrors the one for successes.
            let (lo2, hi2) = wilson_ci95(n - k, n).unwrap();
            assert!((lo - (1.0 - hi2)).abs() < 1e-12 && (hi - (1.0 - lo2)).abs() < 1e-12);
        }
    }
    // The sign of z is ignored; z = 0 collapses to the point estimate.
    assert_eq!(wilson_ci(3, 15, -Z_95), wilson_ci95(3, 15));
    assert_eq!(wilson_ci(3, 15, 0.0), Some((0.2, 0.2)));
}

// ---------------------------------------------------------------- McNemar

#[test]
fn mcnemar_trivial_cases() {
    // No discordant pairs.
    assert_eq!(mcnemar_exact(0, 0), 1.0);
    // b == c, and |b - c| == 1: P(X <= min) >= 1/2, so p = 1.
    // scipy.stats.binomtest(7, 14, 0.5).pvalue == 1.0,
    // scipy.stats.binomtest(10, 21, 0.5).pvalue == 1.0,
    // scipy.stats.binomtest(0, 1, 0.5).pvalue == 1.0
    assert_eq!(mcnemar_exact(7, 7), 1.0);
    assert_eq!(mcnemar_exact(10, 11), 1.0);
    assert_eq!(mcnemar_exact(0, 1), 1.0);
    assert_eq!(mcnemar_exact(2500, 2500), 1.0);
    assert_eq!(mcnemar_exact(u64::MAX, u64::MAX), 1.0);
}

#[test]
fn mcnemar_matches_scipy() {
    // Each reference: scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue (scipy 1.17.1),
    // which statsmodels' mcnemar([[0, b], [c, 0]], exact=True).pvalue reproduces; where
    // they differ in the last digits the value is the exact rational
    // float(Fraction(2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)), 2**(b + c)))
    // computed with Python integers (marked "exact").
    let cases: [(u64, u64, f64); 10] = [
        (3, 12, 0.03515625),
        (0, 5, 0.0625),
        (5, 0, 0.0625),
        (1, 30, 2.9802322387695312e-08),
        // exact; scipy gives 0.00033040001839131815
        (40, 80, 0.0003304000183913207),
        (80, 40, 0.0003304000183913207),
        // exact; scipy gives 0.12206497999113655
        (2000, 2100, 0.12206497999113813),
        (2100, 2000, 0.12206497999113813),
        // exact; scipy gives 0.004883649737517494
        (2400, 2600, 0.004883649737517518),
        (2600, 2400, 0.004883649737517518),
    ];
    for (b, c, expected) in cases {
        let p = mcnemar_exact(b, c);
        assert!(close(p, expected), "b={b} c={c}: {p:e} vs {expected:e}");
    }
    // Larger n, exact rational only (scipy gives 0.013153825113144245 and
    // 0.02586239243973295 respectively, ~3e-14 and ~6e-14 off).
    let p = mcnemar_exact(20_000, 20_500);
    assert!(close(p, 0.013153825113143827), "{p:e}");
    let p = mcnemar_exact(101_000, 100_000);
    assert!(close(p, 0.02586239243973448), "{p:e}");
    // Far tail, no underflow: scipy.stats.binomtest(0, 1000, 0.5).pvalue
    // = 2 * 0.5**1000 = 2**-999.
    let p = mcnemar_exact(0, 1000);
    assert!(close_rel(p, 1.8665272370064378e-301), "{p:e}");
    // Beyond f64 range it underflows to zero rather than producing NaN.
    assert_eq!(mcnemar_exact(0, 5000), 0.0);
}

#[test]
fn mcnemar_matches_exact_integer_sums() {
    // Independent check: 2 * sum_{i <= k} C(n, i) / 2^n with exact u128 binomial
    // coefficients, for every b, c <= 60 (n <= 120 < 128 bits).
    for b in 0..=60u64 {
        for c in 0..=60u64 {
            let n = b + c;
            let k = b.min(c);
            let mut coef: u128 = 1; // C(n, 0)
            let mut sum: u128 = 0;
            for i in 0..=k {
                sum += coef;
                coef = coef * u128::from(n - i) / u128::from(i + 1);
            }
            let expected = (2.0 * sum as f64 / 2f64.powi(n as i32)).min(1.0);
            let p = mcnemar_exact(b, c);
            assert!(close(p, expected), "b={b} c={c}: {p:e} vs {expected:e}");
        }
    }
}

#[test]
fn binomial_log_pmf_matches_direct_sum() {
    // ln C(n, k) - n ln 2 from a direct sum of logs, for n up to 400.
    for n in 1..=400u64 {
        let ln_fact = |m: u64| -> f64 { (2..=m).map(|i| (i as f64).ln()).sum() };
        for k in 0..=n {
            let direct =
                ln_fact(n) - ln_fact(k) - ln_fact(n - k) - n as f64 * std::f64::consts::LN_2;
            let got = ln_binom_half_pmf(k as f64, n as f64);
            assert!(
                (got - direct).abs() <= 1e-11,
                "n={n} k={k}: {got} vs {direct}"
            );
        }
    }
}

// ---------------------------------------------------------------- permutation

#[test]
fn permutation_trivial_cases() {
    assert_eq!(paired_permutation_exact(&[]), 1.0);
    // scipy permutation_test with x = y = [1, 2, 3, 4, 5, 1, 2, 3] gives 1.0.
    assert_eq!(paired_permutation_exact(&[0; 8]), 1.0);
    // A single nonzero difference: |T*| = |T_obs| always.
    assert_eq!(paired_permutation_exact(&[3]), 1.0);
    assert_eq!(paired_permutation_exact(&[0, -2, 0]), 1.0);
    // T_obs = 0 with nonzero differences.
    assert_eq!(paired_permutation_exact(&[2, -1, -1]), 1.0);
}

#[test]
fn permutation_matches_scipy_small() {
    // Each reference: scipy.stats.permutation_test((x, y),
    //     statistic=lambda x, y, axis: np.sum(x - y, axis=axis), vectorized=True,
    //     permutation_type="samples", alternative="two-sided", n_resamples=np.inf).pvalue
    // (exact enumeration of all 2^n within-pair swaps, scipy 1.17.1), confirmed by exact
    // counting of sign patterns with Python integers. diffs = x - y.
    let cases: [(&[i64], &[i64], f64); 4] = [
        // Ties and zeros: diffs [1, -1, 0, 3, 0, -1, 1, -2, 4, 1].
        (
            &[3, 4, 2, 5, 1, 3, 4, 2, 5, 3],
            &[2, 5, 2, 2, 1, 4, 3, 4, 1, 2],
            0.421875,
        ),
        // Judge scores, n = 12: diffs [2, 0, 2, 1, 0, 1, 3, 0, 2, 2, 2, 0].
        (
            &[5, 4, 4, 5, 3, 2, 5, 4, 3, 5, 4, 1],
            &[3, 4, 2, 4, 3, 1, 2, 4, 1, 3, 2, 1],
            0.0078125,
        ),
        // diffs [1, 1, 1, 1, 1]: 2 / 32.
        (&[2, 2, 2, 2, 2], &[1, 1, 1, 1, 1], 0.0625),
        // Binary events, n = 11: diffs [1, 0, 1, 0, -1, 1, 1, 0, 1, 0, 1].
        (
            &[1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1],
            &[0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0],
            0.125,
        ),
    ];
    for (x, y, expected) in cases {
        let diffs: Vec<i64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
        assert_close(paired_permutation_exact(&diffs), expected);
        assert_close(brute_force_permutation(&diffs), expected);
        // Swapping the roles of the models leaves the two-sided p-value unchanged.
        let negated: Vec<i64> = diffs.iter().map(|d| -d).collect();
        assert_close(paired_permutation_exact(&negated), expected);
    }
}

#[test]
fn permutation_matches_brute_force_random() {
    // Pseudo-random small cases (n up to 14, |d| up to 4 or scaled by 3) against full
    // enumeration of the sign patterns.
    for seed in 0..300u64 {
        let n = (seed % 15) as usize;
        let mut diffs = lcg_diffs(seed + 1, n);
        if seed % 4 == 0 {
            // Exercises the gcd reduction.
            diffs.iter_mut().for_each(|d| *d *= 3);
        }
        let p = paired_permutation_exact(&diffs);
        let expected = brute_force_permutation(&diffs);
        assert!(close(p, expected), "{diffs:?}: {p} vs {expected}");
    }
}

#[test]
fn permutation_200_diffs() {
    // diffs = lcg(3, 200) (see lcg_diffs): sum 100, 47 zeros.
    // Reference: exact rational count of sign patterns with Python integers,
    //   mags = [abs(d) for d in diffs if d]; S = sum(mags); t = abs(sum(diffs))
    //   cnt = {0: 1}; for a in mags: cnt = {u: cnt.get(u, 0) + cnt.get(u - a, 0) ...}
    //   float(Fraction(sum(v for u, v in cnt.items() if abs(2*u - S) >= t), 2**len(mags)))
    //   = 0.0027851204347773915
    // Cross-checks: grouped form (np.convolve of a * Binomial(m_a, 1/2) pmfs from
    // scipy.stats.binom.pmf) = 0.0027851204347773928; scipy.stats.permutation_test
    // (same statistic, n_resamples=1_000_000, rng=np.random.default_rng(12345))
    // = 0.00274999725000275 (Monte Carlo, standard error ~5e-5).
    let diffs = lcg_diffs(3, 200);
    assert_eq!(diffs.iter().sum::<i64>(), 100);
    assert_eq!(diffs.iter().filter(|&&d| d == 0).count(), 47);
    let p = paired_permutation_exact(&diffs);
    assert!(close(p, 0.0027851204347773915), "{p:e}");
    // Monte Carlo bound: within 4 standard errors of the resampling estimate.
    assert!((p - 0.00274999725000275).abs() < 4.0 * 5.3e-5);
}

#[test]
fn permutation_10000_diffs() {
    // diffs = lcg(10, 10_000): sum 648, 2003 zeros.
    // Reference, computed without a per-pair recursion: with m_a pairs of |d| = a, the
    // null distribution of U (sum of |d| with + sign) is the convolution over a of
    // a * Binomial(m_a, 1/2):
    //   dist = [1.0]; for a in 1..=4: g = zeros(a*m_a + 1);
    //   g[::a] = scipy.stats.binom.pmf(arange(m_a + 1), m_a, 0.5); dist = np.convolve(dist, g)
    //   p = min(1, 2 * math.fsum(dist[S - 2*u >= t]))  = 0.008447164196632946
    let diffs = lcg_diffs(10, 10_000);
    assert_eq!(diffs.iter().sum::<i64>(), 648);
    assert_eq!(diffs.iter().filter(|&&d| d == 0).count(), 2003);
    let p = paired_permutation_exact(&diffs);
    assert!(close(p, 0.008447164196632946), "{p:e}");
}

#[test]
fn permutation_large_magnitudes_use_sparse_table() {
    // Sum of |d| far above PERMUTATION_MAX_SUM, but few distinct sums.
    let diffs = [i64::MIN, i64::MAX, 1 << 40, -(1 << 40), 5];
    let p = paired_permutation_exact(&diffs);
    let expected = {
        // Enumerate in i128 to avoid overflow.
        let t_obs = diffs.iter().map(|&d| i128::from(d)).sum::<i128>().abs();
        let hits = (0u32..32)
            .filter(|mask| {
                let t: i128 = diffs
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        let d = i128::from(d);
                        if mask >> i & 1 == 1 {
                            d
                        } else {
                            -d
                        }
                    })
                    .sum();
                t.abs() >= t_obs
            })
            .count();
        hits as f64 / 32.0
    };
    assert_close(p, expected);
    // Widely spread magnitudes that still fit the dense table, against brute force.
    assert_close(
        paired_permutation_exact(&[1000, 2000, 4000, 8000, 16001]),
        brute_force_permutation(&[1000, 2000, 4000, 8000, 16001]),
    );
}

#[test]
fn sparse_and_dense_agree() {
    for seed in 0..40u64 {
        let diffs = lcg_diffs(seed + 1000, 60);
        let mut mags: Vec<u64> = diffs
            .iter()
            .filter(|&&d| d != 0)
            .map(|d| d.unsigned_abs())
            .collect();
        if mags.is_empty() {
            continue;
        }
        mags.sort_unstable();
        let total: u64 = mags.iter().sum();
        let t = diffs.iter().sum::<i64>().unsigned_abs();
        let u_max = (total - t) / 2;
        let dense = lower_tail_dense(&mags, total as usize, u_max as usize);
        let sparse = lower_tail_sparse(&mags, u128::from(u_max));
        assert!(close(dense, sparse), "seed {seed}: {dense} vs {sparse}");
    }
}

// ---------------------------------------------------------------- Holm

#[test]
fn holm_matches_statsmodels() {
    // Each reference: statsmodels.stats.multitest.multipletests(p, method="holm")[1]
    // (statsmodels 0.15.0).
    let cases: [(&[f64], &[f64]); 6] = [
        // Unsorted input.
        (&[0.01, 0.04, 0.03, 0.005], &[0.03, 0.06, 0.06, 0.02]),
        // Ties, unsorted.
        (
            &[0.02, 0.02, 0.5, 0.001, 0.02],
            &[0.08, 0.08, 0.5, 0.005, 0.08],
        ),
        // Monotonicity enforced (0.3 * 2 < running max), and capping.
        (
            &[0.3, 0.2, 0.9, 0.04],
            &[0.6000000000000001, 0.6000000000000001, 0.9, 0.16],
        ),
        (&[0.04], &[0.04]),
        (&[0.0, 1.0, 0.5, 0.5], &[0.0, 1.0, 1.0, 1.0]),
        (
            &[0.2, 0.2, 0.2],
            &[0.6000000000000001, 0.6000000000000001, 0.6000000000000001],
        ),
    ];
    for (p, expected) in cases {
        let adj = holm_adjust(p);
        assert_eq!(adj.len(), expected.len());
        for (a, e) in adj.iter().zip(expected) {
            assert!(close(*a, *e), "{p:?}: {adj:?} vs {expected:?}");
        }
    }
    assert!(holm_adjust(&[]).is_empty());
}

#[test]
fn holm_properties() {
    let p = [0.8, 0.001, 0.04, 0.04, 0.3, 0.0002, 0.9, 0.011];
    let adj = holm_adjust(&p);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[i].partial_cmp(&p[j]).unwrap());
    for w in order.windows(2) {
        assert!(adj[w[0]] <= adj[w[1]], "not monotone: {adj:?}");
    }
    for (a, q) in adj.iter().zip(p) {
        assert!(*a >= q && *a <= 1.0);
    }
    // NaN stays at its position and does not disturb the rest beyond counting towards m.
    let adj = holm_adjust(&[0.01, f64::NAN, 0.02]);
    assert!(adj[1].is_nan());
    assert_close(adj[0], 0.03);
    assert_close(adj[2], 0.04);
}
