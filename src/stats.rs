//! Statistics for comparing a fine-tuned model's safety metrics with its baseline.
//!
//! Everything here is plain `std` and deterministic:
//!
//! * [`wilson_ci`] / [`wilson_ci95`]: confidence interval for one model's rate of an event
//!   (refusals, unsafe completions, ...).
//! * [`mcnemar_exact`]: exact test that two models' event rates differ, on paired binary
//!   outcomes over the same prompts.
//! * [`paired_permutation_exact`]: exact sign-flip test on paired integer score differences
//!   (e.g. judge scores on a 1..=5 scale).
//! * [`holm_adjust`]: Holm-Bonferroni correction across several such tests.

/// z quantile for a two-sided 95% interval: the 0.975 quantile of the standard normal
/// (`scipy.stats.norm.ppf(0.975)`).
pub const Z_95: f64 = 1.959963984540054;

/// Size limit for [`paired_permutation_exact`]. When the reduced sum S of |differences|
/// (divided by the greatest common divisor of the nonzero ones) is at most this, the null
/// distribution is held as a dense table of S + 1 probabilities (8 bytes each); above it, as a
/// sparse list of the distinct reachable sums, which may hold at most this many entries.
pub const PERMUTATION_MAX_SUM: u64 = 1 << 24;

/// Probabilities below this are set to zero inside the permutation dynamic programme, which
/// keeps the arithmetic out of subnormal numbers (slow) and lets the table shrink. The mass
/// lost this way is at most (number of updates) * 1e-300, far below anything reported.
const PROB_FLOOR: f64 = 1e-300;

/// Wilson score interval for a binomial proportion at confidence given by z
/// (1.959963984540054 for 95%).
///
/// Computes `(p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)` with `p̂ = successes / n`,
/// the same interval as `statsmodels.stats.proportion.proportion_confint(..., method="wilson")`.
/// The bounds are clamped to `[0, 1]`; the lower bound is exactly `0.0` when
/// `successes == 0` and the upper bound exactly `1.0` when `successes == n`.
///
/// Assumes independent trials with a common success probability. `z` is the two-sided
/// normal quantile; its sign is ignored.
///
/// Returns `None` when `n == 0`, when `successes > n`, or when `z` is not finite.
#[must_use]
pub fn wilson_ci(successes: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || successes > n || !z.is_finite() {
        return None;
    }
    let z = z.abs();
    let nf = n as f64;
    let p = successes as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
    let lower = if successes == 0 {
        0.0
    } else {
        (center - half).clamp(0.0, 1.0)
    };
    let upper = if successes == n {
        1.0
    } else {
        (center + half).clamp(0.0, 1.0)
    };
    Some((lower, upper))
}

/// 95% Wilson score interval: [`wilson_ci`] with `z =` [`Z_95`] (1.959963984540054).
///
/// Same assumptions and `None` cases as [`wilson_ci`] (`n == 0` or `successes > n`).
#[must_use]
pub fn wilson_ci95(successes: u64, n: u64) -> Option<(f64, f64)> {
    wilson_ci(successes, n, Z_95)
}

/// McNemar's exact test (two-sided): b = pairs where only the baseline had the event, c = only
/// the candidate.
///
/// p = min(1, 2 * P(X <= min(b,c))) for X ~ Binomial(b+c, 0.5); 1.0 when b + c == 0.
/// This equals `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue` and
/// `statsmodels.stats.contingency_tables.mcnemar(table, exact=True).pvalue`.
///
/// Assumes the pairs are independent (one pair per benchmark prompt); the concordant pairs
/// (both or neither model had the event) carry no information and are not needed.
///
/// Computed in log space (Loader's saddle-point form of the binomial probability) with the tail
/// summed as ratios to its largest term, so it neither overflows nor underflows for large
/// b + c and is accurate to about 1e-13 relative. Results below about 1e-308 underflow to `0.0`.
#[must_use]
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let k = b.min(c);
    let big = b.max(c);
    // When the counts differ by at most one, P(X <= k) >= 1/2 exactly (symmetry), so p = 1.
    // This covers b + c == 0.
    if big - k <= 1 {
        return 1.0;
    }
    let kf = k as f64;
    let nf = kf + big as f64;
    // P(X <= k) / P(X = k) = sum_{j <= k} P(X = j) / P(X = k). Walking down from j = k, each
    // step multiplies by P(X = j-1) / P(X = j) = j / (n - j + 1) < 1 (as k < n / 2), so the
    // terms shrink monotonically and the sum can stop once they no longer matter.
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    let mut j = k;
    while j > 0 {
        let jf = j as f64;
        term *= jf / (nf - jf + 1.0);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
        j -= 1;
    }
    let ln_p = std::f64::consts::LN_2 + ln_binom_half_pmf(kf, nf) + sum.ln();
    ln_p.exp().min(1.0)
}

/// ln P(X = k) for X ~ Binomial(n, 1/2), with 0 <= k <= n integers held in `f64`s.
///
/// Uses Loader's saddle-point form (as in R's `dbinom` and Boost), which avoids the
/// cancellation between large log-factorials:
/// `ln P = δ(n) - δ(k) - δ(n-k) - D(k, n/2) - D(n-k, n/2) - ln(2π k (n-k) / n) / 2`,
/// with δ the Stirling remainder ([`stirling_error`]) and D the deviance term ([`bd0`]).
/// Relative error of the probability is a few 1e-15.
fn ln_binom_half_pmf(k: f64, n: f64) -> f64 {
    if k == 0.0 || k == n {
        return -n * std::f64::consts::LN_2;
    }
    let half_n = 0.5 * n;
    let lc = stirling_error(n)
        - stirling_error(k)
        - stirling_error(n - k)
        - bd0(k, half_n)
        - bd0(n - k, half_n);
    let lf = (2.0 * std::f64::consts::PI).ln() + k.ln() + (-k / n).ln_1p();
    lc - 0.5 * lf
}

/// Stirling remainder δ(n) = ln(n!) - ((n + 1/2) ln n - n + ln(2π) / 2) for an integer n >= 1.
fn stirling_error(n: f64) -> f64 {
    // 0.5 * ln(2π)
    const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;
    if n <= 15.0 {
        // n! is exact in f64 here; the cancellation costs ~1e-15 absolute.
        let mut fact = 1.0_f64;
        let mut i = 2.0_f64;
        while i <= n {
            fact *= i;
            i += 1.0;
        }
        return fact.ln() - ((n + 0.5) * n.ln() - n + HALF_LN_2PI);
    }
    // Asymptotic series with Bernoulli-number coefficients; the first omitted term,
    // 691 / (360360 n^11), is below 3e-17 for n > 15.
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    let nn = n * n;
    (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
}

/// Deviance term D(x, m) = x ln(x / m) + m - x, computed without cancellation when x is close
/// to m (Loader 2000). Requires x > 0, m > 0.
fn bd0(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        // x ln(x/m) + m - x = (x - m) v + 2x sum_{j >= 1} v^(2j+1) / (2j+1), v = (x-m)/(x+m).
        let v = (x - m) / (x + m);
        let v2 = v * v;
        let mut s = (x - m) * v;
        let mut ej = 2.0 * x * v;
        let mut j = 1.0_f64;
        loop {
            ej *= v2;
            let s1 = s + ej / (2.0 * j + 1.0);
            if s1 == s {
                return s1;
            }
            s = s1;
            j += 1.0;
        }
    }
    x * (x / m).ln() + m - x
}

/// Exact two-sided paired permutation (sign-flip) test for integer paired differences
/// (candidate - baseline): under H0 each nonzero difference's sign is +/- with prob 1/2
/// independently; statistic T = sum of diffs; p = P(|T*| >= |T_obs|).
///
/// Computed exactly by dynamic programming over the integer sum distribution (each step
/// convolves with {+d: 0.5, -d: 0.5}); the comparison |T*| >= |T_obs| is between integers, so
/// it has no rounding issues. Zero differences contribute nothing. Returns 1.0 when all
/// differences are zero or the slice is empty. This is the value of
/// `scipy.stats.permutation_test((x, y), statistic=lambda x, y: np.sum(x - y),
/// permutation_type="samples", alternative="two-sided", n_resamples=np.inf)`.
///
/// Assumes the pairs are independent and the differences' distribution is symmetric about
/// zero under H0 (exchangeable baseline/candidate within a pair). Meant for small integer
/// differences (e.g. judge scores 1..=5 give |d| <= 4): time is O(n · W) and memory O(S),
/// where S is the sum of |d| divided by their greatest common divisor and W <= S the width
/// of the part of the distribution above 1e-300 (n = 10_000 with |d| <= 4 takes well under a
/// second in a release build). Accurate to about 1e-12 relative; the absolute error is below
/// 1e-280, so p-values that small are not resolved.
///
/// # Panics
///
/// When the reduced sum S exceeds [`PERMUTATION_MAX_SUM`] and the number of distinct
/// reachable sums also exceeds it (large, varied differences over many nonzero pairs). A few
/// large differences are handled by the sparse table and do not panic.
#[must_use]
pub fn paired_permutation_exact(diffs: &[i64]) -> f64 {
    let mut mags: Vec<u64> = diffs
        .iter()
        .filter(|&&d| d != 0)
        .map(|d| d.unsigned_abs())
        .collect();
    if mags.is_empty() {
        return 1.0;
    }
    let t_obs: i128 = diffs.iter().map(|&d| i128::from(d)).sum();
    if t_obs == 0 {
        // |T*| >= 0 always holds.
        return 1.0;
    }
    // Dividing every magnitude (and hence every attainable sum) by their gcd is exact and
    // shrinks the table.
    let g = mags.iter().fold(0u64, |acc, &m| gcd(acc, m));
    for m in &mut mags {
        *m /= g;
    }
    mags.sort_unstable();
    let t = t_obs.unsigned_abs() / u128::from(g);
    let total: u128 = mags.iter().map(|&m| u128::from(m)).sum();
    // Under H0, T* = 2U - S with U the sum of the magnitudes that get a + sign. By symmetry
    // P(|T*| >= t) = 2 P(U <= (S - t) / 2) for t > 0 (t <= S, and t, S have the same parity).
    let u_max = (total - t) / 2;
    let lower_tail = if total <= u128::from(PERMUTATION_MAX_SUM) {
        lower_tail_dense(&mags, total as usize, u_max as usize)
    } else {
        lower_tail_sparse(&mags, u_max)
    };
    (2.0 * lower_tail).min(1.0)
}

/// P(U <= u_max) for U = sum of independent {0, m_i} (prob 1/2 each), with a dense table
/// indexed by U. `mags` are sorted ascending, all nonzero, and sum to `total`.
fn lower_tail_dense(mags: &[u64], total: usize, u_max: usize) -> f64 {
    // dp[u] = P(U = u) over the items seen so far; nonzero only inside [lo, hi].
    let mut dp = vec![0.0_f64; total + 1];
    dp[0] = 1.0;
    let (mut lo, mut hi) = (0usize, 0usize);
    for &m in mags {
        let a = m as usize;
        // New P(U = u) = (P(U = u) + P(U = u - a)) / 2. Updating from the top down reads
        // dp[u - a] before it is overwritten.
        for u in (lo + a..=hi + a).rev() {
            let v = 0.5 * (dp[u] + dp[u - a]);
            dp[u] = if v < PROB_FLOOR { 0.0 } else { v };
        }
        // Below lo + a only the "minus" branch reaches u.
        for v in &mut dp[lo..(lo + a).min(hi + 1)] {
            let h = 0.5 * *v;
            *v = if h < PROB_FLOOR { 0.0 } else { h };
        }
        hi += a;
        while hi > lo && dp[hi] == 0.0 {
            hi -= 1;
        }
        while lo < hi && dp[lo] == 0.0 {
            lo += 1;
        }
    }
    if u_max < lo {
        return 0.0;
    }
    // Smallest terms first.
    dp[lo..=u_max.min(hi)].iter().sum()
}

/// Same as [`lower_tail_dense`] but holding only the reachable sums, as a sorted list; used
/// when the sum of magnitudes is too large for a dense table.
fn lower_tail_sparse(mags: &[u64], u_max: u128) -> f64 {
    let limit = PERMUTATION_MAX_SUM as usize;
    let mut dist: Vec<(u128, f64)> = vec![(0, 1.0)];
    for &m in mags {
        let a = u128::from(m);
        let mut next = Vec::with_capacity((dist.len() * 2).min(limit));
        // Merge `dist` (sign -) with `dist` shifted by a (sign +), both sorted by sum.
        let (mut i, mut j) = (0usize, 0usize);
        while i < dist.len() || j < dist.len() {
            let (u, p) = if j == dist.len() || (i < dist.len() && dist[i].0 < dist[j].0 + a) {
                i += 1;
                (dist[i - 1].0, dist[i - 1].1)
            } else if i < dist.len() && dist[i].0 == dist[j].0 + a {
                i += 1;
                j += 1;
                (dist[i - 1].0, dist[i - 1].1 + dist[j - 1].1)
            } else {
                j += 1;
                (dist[j - 1].0 + a, dist[j - 1].1)
            };
            let p = 0.5 * p;
            if p >= PROB_FLOOR {
                assert!(
                    next.len() < limit,
                    "paired_permutation_exact: null distribution has more than {limit} \
                     distinct sums; the differences are too large for an exact test"
                );
                next.push((u, p));
            }
        }
        dist = next;
    }
    dist.iter()
        .take_while(|&&(u, _)| u <= u_max)
        .map(|&(_, p)| p)
        .sum()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Holm-Bonferroni step-down adjusted p-values, in the input order, monotone, capped at 1.
///
/// With the p-values sorted ascending as p(1) <= ... <= p(m), the adjusted value of p(i) is
/// `min(1, max_{j <= i} (m - j + 1) * p(j))`, as in
/// `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`. Tied p-values get the
/// same adjusted value. Controls the family-wise error rate under any dependence between the
/// tests.
///
/// Assumes each input is a p-value in `[0, 1]`. A NaN input gives NaN at its position, counts
/// towards m, and leaves the others as if it were the largest p-value. An empty slice gives an
/// empty vector.
#[must_use]
pub fn holm_adjust(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    // Stable sort, NaNs last.
    order.sort_by(|&i, &j| {
        let (a, b) = (p_values[i], p_values[j]);
        a.partial_cmp(&b)
            .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
    });
    let mut adjusted = vec![0.0; m];
    let mut running_max = 0.0_f64;
    for (rank, &idx) in order.iter().enumerate() {
        let p = p_values[idx];
        if p.is_nan() {
            adjusted[idx] = f64::NAN;
            continue;
        }
        let adj = ((m - rank) as f64 * p).min(1.0);
        running_max = running_max.max(adj);
        adjusted[idx] = running_max;
    }
    adjusted
}

#[cfg(test)]
mod tests {
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
}
