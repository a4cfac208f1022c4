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
//! * [`sequential`]: anytime-valid counterparts (e-processes, confidence sequences) that may be
//!   looked at after every prompt and stopped early.

pub mod sequential;

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
mod tests;
