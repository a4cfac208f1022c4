//! Anytime-valid sequential tests on paired outcomes: decide drift (or its absence) before the
//! last prompt of a benchmark without inflating the error rates by peeking.
//!
//! A fixed-size test (McNemar, permutation) is valid only when it is computed once, at the
//! planned sample size. The tests here are *e-processes*: nonnegative processes whose expected
//! value under the null hypothesis is at most 1 at every stopping time. By Ville's inequality
//! (the maximal inequality for nonnegative supermartingales), the probability that one ever
//! reaches `1/a` under the null is at most `a`, so the data may be looked at after every prompt
//! (or every batch) and the run stopped as soon as the evidence is in.
//!
//! * [`DiscordantSprt`]: for a rate (harmfulness, over-refusal) on paired binary outcomes. Only
//!   the discordant pairs (the event in the candidate only, or in the baseline only) carry
//!   information about the difference of the two rates; given that a pair is discordant, it is
//!   "candidate only" with probability `q = c / (b + c)` (b, c: the two discordant
//!   probabilities), and `q <= 1/2` exactly when the candidate's rate is not above the
//!   baseline's. The e-process is a mixture sequential probability ratio test (Wald 1945; the
//!   mixture over alternatives as in Robbins 1970) of `q = 1/2` against the alternatives
//!   `q` in [`MIXTURE_ALTERNATIVES`], equally weighted. It is a martingale with mean 1 when
//!   `q = 1/2` and a supermartingale when `q < 1/2` (each component's likelihood ratio has
//!   conditional mean `2(q p + (1-q)(1-p)) <= 1` for `q <= 1/2 <= p`).
//! * [`BettingEProcess`]: for the mean of bounded observations (paired score differences in
//!   `[-4, 4]`, or the rate difference `D = candidate - baseline` in `[-1, 1]`), testing
//!   `mean <= m` or `mean >= m`. Capital `K_t = prod (1 + l_i (x_i - m))` with the observations
//!   scaled to `[0, 1]` and the predictable plug-in bets `l_i` of Waudby-Smith & Ramdas (2023),
//!   "Estimating means of bounded random variables by betting", JRSS-B, truncated so each
//!   factor stays positive. Under the null it is a nonnegative supermartingale with `K_0 = 1`
//!   (a test supermartingale; Ramdas et al. 2023, "Game-theoretic statistics and safe
//!   anytime-valid inference", Statistical Science).
//! * [`ConfidenceSequence`]: the betting confidence sequence for the mean (Waudby-Smith &
//!   Ramdas 2023): at each time the set of `m` that neither one-sided betting e-process (each at
//!   `alpha / 2`) rejects, intersected over the times it was computed. With probability at
//!   least `1 - alpha` it contains the true mean at every time simultaneously (time-uniform
//!   coverage, as in Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic
//!   confidence sequences", Annals of Statistics).
//! * [`SequentialTest`]: the decision rule of `mode = "sequential"`. After each look (at least
//!   `min_prompts` pairs):
//!   - **drift** when the drift e-process (tests "the candidate is not worse", delta <= 0)
//!     reaches `2 / alpha` and the estimated delta exceeds the threshold;
//!   - **no drift** when the upper end of the `1 - alpha` confidence sequence for delta falls
//!     below the threshold (equivalently: the one-sided betting e-process for `delta >=
//!     threshold` reaches `2 / alpha`);
//!   - otherwise the run goes on; at the end of the benchmark the decision is the fixed test's
//!     (McNemar exact, permutation), exactly as in `mode = "fixed"`.
//!
//! **Error rates.** The fixed test fires only on a two-sided p-value below `alpha` with the
//! candidate worse, i.e. a one-sided test at `alpha / 2`; the drift e-process spends the other
//! `alpha / 2` (threshold `2 / alpha`). By the union bound the probability of a false alarm
//! (true delta <= 0) of the whole sequential procedure is at most `alpha`, whatever the looks.
//! Stopping for "no drift" when the true delta is at or above the threshold requires the
//! confidence sequence to miss it from above, which has probability at most `alpha / 2`; this
//! bounds the power lost to the fixed test at such deltas by `alpha / 2`.
//!
//! Everything is plain `std` and deterministic.

/// Alternatives `q = P(candidate only | discordant)` of the [`DiscordantSprt`] mixture, equally
/// weighted. Spread from barely-worse to nearly-all-discordant-pairs-worse, so both a small
/// drift over many prompts and a large one over a few dozen are picked up.
pub const MIXTURE_ALTERNATIVES: [f64; 10] =
    [0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.99];

/// Largest fraction of the admissible bet the betting processes stake (`c` in Waudby-Smith &
/// Ramdas 2023, who use 1/2 or 3/4). Keeps every factor at least `1 - c` and the capital away
/// from ruin after a single adverse observation.
pub const MAX_BET_FRACTION: f64 = 0.5;

/// Mixture sequential probability ratio test on the discordant pairs of a paired binary outcome.
///
/// Null: given discordance, "candidate only" has probability `q <= 1/2` (the candidate's rate is
/// not higher than the baseline's). The e-value after `c` candidate-only and `b` baseline-only
/// pairs is `mean_k (2 p_k)^c (2 (1 - p_k))^b` over `p_k` in [`MIXTURE_ALTERNATIVES`];
/// concordant pairs leave it unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscordantSprt {
    log_lr: [f64; MIXTURE_ALTERNATIVES.len()],
    /// Pairs with the event in the candidate only.
    pub candidate_only: u64,
    /// Pairs with the event in the baseline only.
    pub baseline_only: u64,
}

impl Default for DiscordantSprt {
    fn default() -> Self {
        Self::new()
    }
}

impl DiscordantSprt {
    #[must_use]
    pub fn new() -> Self {
        DiscordantSprt {
            log_lr: [0.0; MIXTURE_ALTERNATIVES.len()],
            candidate_only: 0,
            baseline_only: 0,
        }
    }

    /// Adds one pair: whether the baseline and the candidate had the event.
    pub fn observe(&mut self, baseline_event: bool, candidate_event: bool) {
        match (baseline_event, candidate_event) {
            (false, true) => {
                self.candidate_only += 1;
                for (l, p) in self.log_lr.iter_mut().zip(MIXTURE_ALTERNATIVES) {
                    *l += (2.0 * p).ln();
                }
            }
            (true, false) => {
                self.baseline_only += 1;
                for (l, p) in self.log_lr.iter_mut().zip(MIXTURE_ALTERNATIVES) {
                    *l += (2.0 * (1.0 - p)).ln();
                }
            }
            _ => {}
        }
    }

    /// ln of the e-value.
    #[must_use]
    pub fn log_e_value(&self) -> f64 {
        log_mean_exp(&self.log_lr)
    }

    /// The e-value (1 before any discordant pair).
    #[must_use]
    pub fn e_value(&self) -> f64 {
        self.log_e_value().exp()
    }
}

fn log_mean_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    let s: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    max + (s / xs.len() as f64).ln()
}

/// Which side of `m` a betting process bets on (the alternative hypothesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    /// Tests `mean <= m` (bets the mean is above `m`).
    Greater,
    /// Tests `mean >= m` (bets the mean is below `m`).
    Less,
}

/// Running plug-in estimates of Waudby-Smith & Ramdas (2023) for observations scaled to
/// `[0, 1]`: `mu_t = (1/2 + sum x_i) / (t + 1)`, `var_t = (1/4 + sum (x_i - mu_i)^2) / (t + 1)`.
#[derive(Clone, Debug, PartialEq)]
struct PlugIn {
    t: u64,
    sum: f64,
    sum_sq: f64,
    /// ln(1 / a) for the level `a` the bets are tuned for.
    log_inv_level: f64,
}

impl PlugIn {
    fn new(level: f64) -> Self {
        PlugIn {
            t: 0,
            sum: 0.0,
            sum_sq: 0.0,
            log_inv_level: (1.0 / level).ln(),
        }
    }

    /// The untruncated predictable bet for the next observation (number t + 1):
    /// `sqrt(2 ln(1/a) / (var_t (t + 1) ln(t + 2)))`.
    fn next_bet(&self) -> f64 {
        let next = (self.t + 1) as f64;
        let var = (0.25 + self.sum_sq) / next;
        (2.0 * self.log_inv_level / (var * next * (next + 1.0).ln())).sqrt()
    }

    fn push(&mut self, x: f64) {
        self.t += 1;
        self.sum += x;
        let mu = (0.5 + self.sum) / (self.t + 1) as f64;
        self.sum_sq += (x - mu) * (x - mu);
    }
}

/// The bet actually placed on one observation: the plug-in bet truncated to
/// [`MAX_BET_FRACTION`] of the largest bet that keeps the factor positive.
fn truncated_bet(bet: f64, m: f64, alternative: Alternative) -> f64 {
    // Factor 1 + l (x - m) (Greater) or 1 + l (m - x) (Less), x in [0, 1]: its minimum is
    // 1 - l m or 1 - l (1 - m).
    let room = match alternative {
        Alternative::Greater => m,
        Alternative::Less => 1.0 - m,
    };
    if room <= 0.0 {
        bet
    } else {
        bet.min(MAX_BET_FRACTION / room)
    }
}

fn factor(bet: f64, x: f64, m: f64, alternative: Alternative) -> f64 {
    match alternative {
        Alternative::Greater => 1.0 + bet * (x - m),
        Alternative::Less => 1.0 + bet * (m - x),
    }
}

/// Scales `value` from `[lo, hi]` to `[0, 1]` (clamped against rounding).
fn scale(value: f64, lo: f64, hi: f64) -> f64 {
    ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
}

/// Betting e-process for the mean of observations in `[lo, hi]`: tests `mean <= null_mean`
/// ([`Alternative::Greater`]) or `mean >= null_mean` ([`Alternative::Less`]).
///
/// The bets are tuned for rejecting at `level` (the e-value `1 / level`), as in Waudby-Smith &
/// Ramdas (2023); the process is valid whatever `level` is.
#[derive(Clone, Debug, PartialEq)]
pub struct BettingEProcess {
    lo: f64,
    hi: f64,
    m: f64,
    alternative: Alternative,
    plug_in: PlugIn,
    log_capital: f64,
}

impl BettingEProcess {
    /// # Panics
    ///
    /// When `lo >= hi`, `null_mean` is outside `[lo, hi]`, or `level` is not in `(0, 1)`.
    #[must_use]
    pub fn new(lo: f64, hi: f64, null_mean: f64, alternative: Alternative, level: f64) -> Self {
        assert!(lo < hi, "BettingEProcess: lo must be below hi");
        assert!(
            (lo..=hi).contains(&null_mean),
            "BettingEProcess: null_mean outside [lo, hi]"
        );
        assert!(
            level > 0.0 && level < 1.0,
            "BettingEProcess: level in (0, 1)"
        );
        BettingEProcess {
            lo,
            hi,
            m: scale(null_mean, lo, hi),
            alternative,
            plug_in: PlugIn::new(level),
            log_capital: 0.0,
        }
    }

    /// Adds one observation (clamped into `[lo, hi]`).
    pub fn observe(&mut self, value: f64) {
        let x = scale(value, self.lo, self.hi);
        let bet = truncated_bet(self.plug_in.next_bet(), self.m, self.alternative);
        self.log_capital += factor(bet, x, self.m, self.alternative).ln();
        self.plug_in.push(x);
    }

    /// Observations so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.plug_in.t
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.plug_in.t == 0
    }

    #[must_use]
    pub fn log_e_value(&self) -> f64 {
        self.log_capital
    }

    #[must_use]
    pub fn e_value(&self) -> f64 {
        self.log_capital.exp()
    }
}

/// Betting confidence sequence for the mean of observations in `[lo, hi]` (Waudby-Smith &
/// Ramdas 2023, hedging replaced by one e-process per side at `alpha / 2`).
///
/// For a candidate mean `m` the upper side's capital `prod (1 + l_i(m) (m - x_i))` is
/// nondecreasing in `m` (the truncated bet `min(l_i, c / (1 - m))` keeps every factor
/// nondecreasing), so the set of means it does not reject is an interval and its end is found by
/// bisection; likewise for the lower side. [`ConfidenceSequence::bounds`] intersects the
/// interval with those of the earlier calls (a running intersection is still a `1 - alpha`
/// confidence sequence; calling it at every look gives the tightest bounds).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfidenceSequence {
    lo: f64,
    hi: f64,
    alpha: f64,
    plug_in: PlugIn,
    /// (scaled observation, untruncated plug-in bet placed on it).
    steps: Vec<(f64, f64)>,
    lower: f64,
    upper: f64,
}

impl ConfidenceSequence {
    /// # Panics
    ///
    /// When `lo >= hi` or `alpha` is not in `(0, 1)`.
    #[must_use]
    pub fn new(lo: f64, hi: f64, alpha: f64) -> Self {
        assert!(lo < hi, "ConfidenceSequence: lo must be below hi");
        assert!(
            alpha > 0.0 && alpha < 1.0,
            "ConfidenceSequence: alpha in (0, 1)"
        );
        ConfidenceSequence {
            lo,
            hi,
            alpha,
            plug_in: PlugIn::new(alpha / 2.0),
            steps: Vec::new(),
            lower: lo,
            upper: hi,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let x = scale(value, self.lo, self.hi);
        self.steps.push((x, self.plug_in.next_bet()));
        self.plug_in.push(x);
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// ln capital of the one-sided betting process against the scaled mean `m`.
    fn log_capital(&self, m: f64, alternative: Alternative) -> f64 {
        self.steps
            .iter()
            .map(|&(x, bet)| factor(truncated_bet(bet, m, alternative), x, m, alternative).ln())
            .sum()
    }

    /// The `1 - alpha` anytime-valid interval for the mean after the observations so far,
    /// intersected with the intervals of earlier calls. `(lo, hi)` before any observation.
    pub fn bounds(&mut self) -> (f64, f64) {
        let reject = (2.0 / self.alpha).ln();
        // Upper end: the largest m the "mean < m" bettor has not refuted (capital
        // nondecreasing in m; m = 0 is never refuted, its factors are at most 1).
        let upper = if self.log_capital(1.0, Alternative::Less) < reject {
            1.0
        } else {
            bisect(|m| self.log_capital(m, Alternative::Less) >= reject)
        };
        // Lower end: mirror image (capital nonincreasing in m).
        let lower = if self.log_capital(0.0, Alternative::Greater) < reject {
            0.0
        } else {
            1.0 - bisect(|m| self.log_capital(1.0 - m, Alternative::Greater) >= reject)
        };
        let span = self.hi - self.lo;
        self.lower = self.lower.max(self.lo + lower * span);
        self.upper = self.upper.min(self.lo + upper * span);
        (self.lower, self.upper)
    }
}

/// Smallest m in [0, 1] (to within 1e-12, rounded up) with `refuted(m)`, for a monotone
/// predicate that is false at 0 and true at 1.
fn bisect(refuted: impl Fn(f64) -> bool) -> f64 {
    let (mut a, mut b) = (0.0_f64, 1.0_f64);
    while b - a > 1e-12 {
        let mid = 0.5 * (a + b);
        if refuted(mid) {
            b = mid;
        } else {
            a = mid;
        }
    }
    b
}

/// Settings of a [`SequentialTest`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequentialSettings {
    /// Overall false-alarm rate (`[drift] significance`).
    pub alpha: f64,
    /// The drift threshold on the delta (candidate - baseline).
    pub threshold: f64,
    /// No decision before this many pairs.
    pub min_pairs: usize,
}

/// Why a sequential test stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The drift e-process reached `2 / alpha` with the estimated delta above the threshold.
    Drift,
    /// The confidence sequence's upper end fell below the threshold.
    NoDrift,
}

#[derive(Clone, Debug, PartialEq)]
enum DriftEvidence {
    Discordant(DiscordantSprt),
    Betting(BettingEProcess),
}

/// The sequential decision on one overall finding: a rate (paired binary outcomes) or a mean
/// of bounded paired differences. See the module documentation for the rule and its error
/// rates. Feed it pairs in the benchmark's prompt order and call [`SequentialTest::look`] after
/// each batch; when the benchmark ends without a stop, apply the fixed test.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialTest {
    settings: SequentialSettings,
    drift: DriftEvidence,
    /// One-sided test of `delta >= threshold`: the confidence sequence's upper side at the
    /// threshold.
    futility: BettingEProcess,
    n: usize,
    sum: f64,
}

impl SequentialTest {
    /// For a rate: pairs are (baseline had the event, candidate had it); delta in `[-1, 1]`.
    ///
    /// # Panics
    ///
    /// When `alpha` is not in `(0, 1)` or the threshold is outside `[0, 1]`.
    #[must_use]
    pub fn rate(settings: SequentialSettings) -> Self {
        SequentialTest {
            settings,
            drift: DriftEvidence::Discordant(DiscordantSprt::new()),
            futility: BettingEProcess::new(
                -1.0,
                1.0,
                settings.threshold,
                Alternative::Less,
                settings.alpha / 2.0,
            ),
            n: 0,
            sum: 0.0,
        }
    }

    /// For the mean of paired differences (candidate - baseline) in `[lo, hi]` (judge scores
    /// 1..=5: `[-4, 4]`).
    ///
    /// # Panics
    ///
    /// When `lo >= 0 >= hi` fails, `alpha` is not in `(0, 1)`, or the threshold is outside
    /// `[lo, hi]`.
    #[must_use]
    pub fn mean(lo: f64, hi: f64, settings: SequentialSettings) -> Self {
        SequentialTest {
            settings,
            drift: DriftEvidence::Betting(BettingEProcess::new(
                lo,
                hi,
                0.0,
                Alternative::Greater,
                settings.alpha / 2.0,
            )),
            futility: BettingEProcess::new(
                lo,
                hi,
                settings.threshold,
                Alternative::Less,
                settings.alpha / 2.0,
            ),
            n: 0,
            sum: 0.0,
        }
    }

    /// Adds a pair of binary outcomes (for [`SequentialTest::rate`]).
    pub fn observe_events(&mut self, baseline: bool, candidate: bool) {
        let d = f64::from(u8::from(candidate)) - f64::from(u8::from(baseline));
        match &mut self.drift {
            DriftEvidence::Discordant(s) => s.observe(baseline, candidate),
            DriftEvidence::Betting(b) => b.observe(d),
        }
        self.futility.observe(d);
        self.n += 1;
        self.sum += d;
    }

    /// Adds a paired difference (candidate - baseline; for [`SequentialTest::mean`]).
    pub fn observe_difference(&mut self, d: f64) {
        match &mut self.drift {
            DriftEvidence::Discordant(s) => s.observe(d < 0.0, d > 0.0),
            DriftEvidence::Betting(b) => b.observe(d),
        }
        self.futility.observe(d);
        self.n += 1;
        self.sum += d;
    }

    /// Pairs so far.
    #[must_use]
    pub fn pairs(&self) -> usize {
        self.n
    }

    /// The estimated delta (mean paired difference); `None` before any pair.
    #[must_use]
    pub fn delta(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The drift e-value (tests delta <= 0).
    #[must_use]
    pub fn drift_e_value(&self) -> f64 {
        match &self.drift {
            DriftEvidence::Discordant(s) => s.e_value(),
            DriftEvidence::Betting(b) => b.e_value(),
        }
    }

    /// The "no drift" e-value (tests delta >= threshold).
    #[must_use]
    pub fn no_drift_e_value(&self) -> f64 {
        self.futility.e_value()
    }

    /// The decision at a look: `Some` when the run can stop here.
    #[must_use]
    pub fn look(&self) -> Option<Stop> {
        if self.n < self.settings.min_pairs.max(1) {
            return None;
        }
        let reject = (2.0 / self.settings.alpha).ln();
        let log_e = match &self.drift {
            DriftEvidence::Discordant(s) => s.log_e_value(),
            DriftEvidence::Betting(b) => b.log_e_value(),
        };
        let above = self
            .delta()
            .is_some_and(|d| d > self.settings.threshold + 1e-12);
        if log_e >= reject && above {
            Some(Stop::Drift)
        } else if self.futility.log_e_value() >= reject {
            Some(Stop::NoDrift)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
