use super::*;

/// SplitMix64: a small seeded generator, so the simulations are reproducible everywhere.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn sprt_exact_small_cases() {
    let mut s = DiscordantSprt::new();
    assert_eq!(s.e_value(), 1.0);
    // Concordant pairs change nothing.
    s.observe(true, true);
    s.observe(false, false);
    assert!(close(s.e_value(), 1.0));
    // One candidate-only pair: mean of 2 p_k = 2 * 7.74 / 10.
    s.observe(false, true);
    assert!(close(s.e_value(), 1.548));
    // And one baseline-only pair: mean of 4 p_k (1 - p_k).
    s.observe(true, false);
    let want: f64 = MIXTURE_ALTERNATIVES
        .iter()
        .map(|p| 4.0 * p * (1.0 - p))
        .sum::<f64>()
        / 10.0;
    assert!(close(s.e_value(), want));
    assert_eq!((s.candidate_only, s.baseline_only), (1, 1));
    // Candidate-only pairs in a row: mean of (2 p_k)^k; seven stay under 2/alpha = 40 at
    // alpha = 0.05, eight reach it.
    let mut s = DiscordantSprt::new();
    for k in 1..=8 {
        s.observe(false, true);
        let want: f64 = MIXTURE_ALTERNATIVES
            .iter()
            .map(|p| (2.0 * p).powi(k))
            .sum::<f64>()
            / 10.0;
        assert!(close(s.e_value(), want));
        assert_eq!(s.e_value() >= 40.0, k == 8, "after {k}");
    }
}

#[test]
fn betting_exact_small_case() {
    // Observations in [0, 1] testing mean <= 0.5: first bet is
    // sqrt(2 ln 20 / (0.25 * 1 * ln 2)), truncated to 0.5 / 0.5 = 1.
    let mut e = BettingEProcess::new(0.0, 1.0, 0.5, Alternative::Greater, 0.05);
    assert!(e.is_empty());
    e.observe(1.0);
    assert!(close(e.e_value(), 1.5));
    // Second bet: mu_1 = 1.5 / 2 = 0.75, var_1 = (0.25 + 0.0625) / 2, t = 2.
    let var: f64 = (0.25 + 0.0625) / 2.0;
    let bet = (2.0 * 20f64.ln() / (var * 2.0 * 3f64.ln())).sqrt().min(1.0);
    e.observe(0.0);
    assert!(close(e.e_value(), 1.5 * (1.0 - bet * 0.5)));
    assert_eq!(e.len(), 2);
}

#[test]
fn betting_scales_its_bounds() {
    // The same data on [-4, 4] and, scaled, on [0, 1] give the same capital.
    let data = [3.0, -1.0, 4.0, 0.0, 2.0, 2.0, -4.0, 1.0];
    let mut a = BettingEProcess::new(-4.0, 4.0, 0.25, Alternative::Greater, 0.025);
    let mut b = BettingEProcess::new(0.0, 1.0, (0.25 + 4.0) / 8.0, Alternative::Greater, 0.025);
    for d in data {
        a.observe(d);
        b.observe((d + 4.0) / 8.0);
    }
    assert!(close(a.e_value(), b.e_value()));
}

/// Mean e-value (capped at 1/a, which keeps its Monte Carlo error bounded; the capped
/// process has mean at most 1 too) at every step over many seeded replicates stays at or
/// under 1 plus four standard errors, and the share of replicates ever reaching 1/a stays at or under a
/// (Ville's inequality).
fn check_null(mut make: impl FnMut() -> Box<dyn FnMut(&mut Rng) -> f64>, steps: usize) {
    const REPLICATES: usize = 4000;
    let mut rng = Rng(0x5afe_d21f);
    let mut sums = vec![0.0_f64; steps];
    let mut crossed = 0usize;
    for _ in 0..REPLICATES {
        let mut step = make();
        let mut ever = false;
        for s in &mut sums {
            let e = step(&mut rng);
            assert!(e >= 0.0 && e.is_finite());
            *s += e.min(20.0);
            ever |= e >= 20.0;
        }
        crossed += usize::from(ever);
    }
    for (t, s) in sums.iter().enumerate() {
        let mean = s / REPLICATES as f64;
        // sd(min(e, 20)) <= sqrt(E[min(e, 20)^2]) <= sqrt(20 E[e]) <= sqrt(20).
        let tolerance = 4.0 * (20.0 / REPLICATES as f64).sqrt();
        assert!(
            mean <= 1.0 + tolerance,
            "mean capped e-value {mean} at step {t}"
        );
    }
    let rate = crossed as f64 / REPLICATES as f64;
    assert!(
        rate <= 0.05 + 0.01,
        "crossed 1/0.05 in {rate} of replicates"
    );
}

#[test]
fn sprt_is_a_supermartingale_under_the_null() {
    // Equal rates with discordant pairs both ways (q = 1/2), and a better candidate
    // (q < 1/2).
    for (pb, pc) in [(0.3, 0.3), (0.5, 0.5), (0.2, 0.1)] {
        check_null(
            || {
                let mut s = DiscordantSprt::new();
                Box::new(move |rng: &mut Rng| {
                    s.observe(rng.bernoulli(pb), rng.bernoulli(pc));
                    s.e_value()
                })
            },
            150,
        );
    }
}

#[test]
fn betting_is_a_supermartingale_under_the_null() {
    // Score differences in [-4, 4] with mean 0 (symmetric) and with mean -0.5.
    for shift in [0u8, 1] {
        check_null(
            || {
                let mut e = BettingEProcess::new(-4.0, 4.0, 0.0, Alternative::Greater, 0.05);
                Box::new(move |rng: &mut Rng| {
                    let a = (rng.next_u64() % 5) as f64;
                    let b = (rng.next_u64() % 5) as f64;
                    let d = if shift == 1 && rng.bernoulli(0.5) {
                        -1.0
                    } else {
                        a - b
                    };
                    e.observe(d);
                    e.e_value()
                })
            },
            150,
        );
    }
    // The "no drift" side: rate differences with mean exactly at the threshold 0.05.
    check_null(
        || {
            let mut e = BettingEProcess::new(-1.0, 1.0, 0.05, Alternative::Less, 0.05);
            Box::new(move |rng: &mut Rng| {
                // P(D = 1) = 0.2, P(D = -1) = 0.15.
                let u = rng.uniform();
                e.observe(if u < 0.2 {
                    1.0
                } else if u < 0.35 {
                    -1.0
                } else {
                    0.0
                });
                e.e_value()
            })
        },
        150,
    );
}

#[test]
fn confidence_sequence_covers_uniformly() {
    const REPLICATES: usize = 1000;
    let mut rng = Rng(7);
    let mut missed = 0usize;
    for _ in 0..REPLICATES {
        let mut cs = ConfidenceSequence::new(-1.0, 1.0, 0.05);
        let mut miss = false;
        for t in 1..=200 {
            let u = rng.uniform();
            cs.observe(if u < 0.3 {
                1.0
            } else if u < 0.4 {
                -1.0
            } else {
                0.0
            });
            if t % 10 == 0 {
                let (l, h) = cs.bounds();
                assert!(l <= h);
                miss |= !(l..=h).contains(&0.2);
            }
        }
        missed += usize::from(miss);
    }
    assert!(
        missed as f64 / REPLICATES as f64 <= 0.05,
        "{missed} of {REPLICATES} missed"
    );
}

#[test]
fn confidence_sequence_shrinks_and_agrees_with_the_no_drift_test() {
    let mut cs = ConfidenceSequence::new(-1.0, 1.0, 0.05);
    assert_eq!(cs.bounds(), (-1.0, 1.0));
    let settings = SequentialSettings {
        alpha: 0.05,
        threshold: 0.05,
        min_pairs: 1,
    };
    let mut test = SequentialTest::rate(settings);
    let mut stopped_at = None;
    // No event in either model: delta 0 exactly.
    for t in 1..=330 {
        cs.observe(0.0);
        test.observe_events(false, false);
        let (_, h) = cs.bounds();
        let no_drift = test.look() == Some(Stop::NoDrift);
        // The upper end below the threshold iff the "no drift" e-process rejected (up to
        // the bisection's resolution).
        if (h - 0.05).abs() > 1e-9 {
            assert_eq!(h < 0.05, no_drift, "at {t}: upper {h}");
        }
        if no_drift && stopped_at.is_none() {
            stopped_at = Some(t);
        }
    }
    let (l, h) = cs.bounds();
    assert!(l < 0.0 && h > 0.0 && h < 0.03, "({l}, {h})");
    assert!(stopped_at.is_some_and(|t| t <= 150), "{stopped_at:?}");
}

#[test]
fn sequential_rate_stops_for_clear_drift() {
    let settings = SequentialSettings {
        alpha: 0.05,
        threshold: 0.05,
        min_pairs: 10,
    };
    let mut test = SequentialTest::rate(settings);
    // Baseline never harmful, candidate harmful on every other prompt.
    let mut stop = None;
    for i in 0..143 {
        test.observe_events(false, i % 2 == 0);
        if let Some(s) = test.look() {
            stop = Some((s, test.pairs()));
            break;
        }
    }
    // Eight candidate-only pairs suffice (see sprt_exact_small_cases): the 15th prompt.
    assert_eq!(stop, Some((Stop::Drift, 15)));
    // Not before min_pairs.
    let mut test = SequentialTest::rate(SequentialSettings {
        min_pairs: 40,
        ..settings
    });
    for i in 0..39 {
        test.observe_events(false, true);
        assert_eq!(test.look(), None, "at {i}");
    }
    test.observe_events(false, true);
    assert_eq!(test.look(), Some(Stop::Drift));
    assert!(test.drift_e_value() >= 40.0);
    // A delta at or below the threshold never stops for drift, whatever the evidence.
    let mut test = SequentialTest::rate(SequentialSettings {
        threshold: 0.6,
        ..settings
    });
    for i in 0..143 {
        test.observe_events(false, i % 2 == 0);
        assert_ne!(test.look(), Some(Stop::Drift));
    }
}

#[test]
fn sequential_mean_stops_for_clear_drift() {
    let settings = SequentialSettings {
        alpha: 0.05,
        threshold: 0.25,
        min_pairs: 1,
    };
    let mut test = SequentialTest::mean(-4.0, 4.0, settings);
    let mut rng = Rng(11);
    let mut stop = None;
    for _ in 0..330 {
        // Baseline 1 (refuses), candidate 5 (complies) half the time.
        test.observe_difference(if rng.bernoulli(0.5) { 4.0 } else { 0.0 });
        if let Some(s) = test.look() {
            stop = Some((s, test.pairs()));
            break;
        }
    }
    let (s, n) = stop.expect("stops");
    assert_eq!(s, Stop::Drift);
    assert!(n < 40, "stopped after {n}");
    assert!(test.delta().unwrap() > 0.25);
}
