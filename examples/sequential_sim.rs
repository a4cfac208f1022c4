//! Simulation study of `[drift] mode = "sequential"` against `mode = "fixed"` on the
//! harmfulness rate (issue 17).
//!
//! For each benchmark size, baseline rate and true delta, `--replicates` seeded lineages of
//! paired outcomes (baseline harmful?, candidate harmful?) are drawn; both modes decide on the
//! same draws:
//!
//! * fixed: McNemar's exact test on all prompts, firing as `safety_metrics::compare` does
//!   (delta above the threshold and p below alpha);
//! * sequential: `stats::sequential::SequentialTest::rate`, looked at every `--batch` prompts
//!   from `--min-prompts` on; stops for drift or for no drift, or falls back to the fixed
//!   decision at the end.
//!
//! Pairs: the candidate's rate is `base + delta`. Of the prompts, a share `q_b = churn * base *
//! (1 - base - delta)` are harmful in the baseline only and `q_c = q_b + delta` in the candidate
//! only (the rest concordant). `--churn 1` is independent outcomes (the most discordant pairs,
//! the hardest case for paired tests); `--churn 0` a candidate harmful wherever the baseline was.
//!
//! `--metric score` decides on the mean judge score instead (the `harmfulness_score` finding):
//! each prompt's pair of outcomes is drawn as above (with the pairs harmful in both), a harmful
//! answer scores 5 and any other 1, 2, 3 or 4 with probabilities 0.7, 0.1, 0.1, 0.1 (mean 1.6; a
//! judge's spread over refusals and partial answers); where neither answer is harmful the
//! candidate keeps the baseline's score with probability 0.8. The true score delta is about 3.4
//! times the rate delta in the table. Fixed: the exact paired permutation test, firing when the
//! mean difference is above the threshold (default 0.25, `[drift] harmfulness_score`) and p below
//! alpha; sequential: `SequentialTest::mean` on the differences in [-4, 4].
//!
//! Usage: cargo run --release --example sequential_sim -- [--replicates 10000] [--seed 17]
//!        [--alpha 0.05] [--threshold 0.05] [--batch 10] [--min-prompts 20] [--churn 1]
//!        [--metric rate|score]

use safedrift::stats::sequential::{SequentialSettings, SequentialTest, Stop};
use safedrift::stats::{mcnemar_exact, paired_permutation_exact};

const SIZES: [usize; 2] = [143, 330];
const BASES: [f64; 4] = [0.0, 0.05, 0.2, 0.5];
const DELTAS: [f64; 6] = [0.0, 0.03, 0.05, 0.10, 0.20, 0.50];

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f64 {
    (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone, Copy)]
struct Opts {
    replicates: usize,
    seed: u64,
    alpha: f64,
    threshold: f64,
    batch: usize,
    min_prompts: usize,
    churn: f64,
    /// Decide on the mean score instead of the rate.
    score: bool,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    fixed_fired: u64,
    seq_fired: u64,
    seq_prompts: u64,
    stop_drift: u64,
    stop_no_drift: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.fixed_fired += o.fixed_fired;
        self.seq_fired += o.seq_fired;
        self.seq_prompts += o.seq_prompts;
        self.stop_drift += o.stop_drift;
        self.stop_no_drift += o.stop_no_drift;
    }
}

/// A judge score that is not 5: 1, 2, 3 or 4 with probabilities 0.7, 0.1, 0.1, 0.1.
fn lesser_score(state: &mut u64) -> i64 {
    let u = uniform(state);
    if u < 0.7 {
        1
    } else if u < 0.8 {
        2
    } else if u < 0.9 {
        3
    } else {
        4
    }
}

/// Paired score differences (candidate - baseline) for one lineage: see the module docs.
fn score_differences(opts: &Opts, n: usize, base: f64, delta: f64, state: &mut u64) -> Vec<i64> {
    let qb = opts.churn * base * (1.0 - base - delta);
    let qc = qb + delta;
    let both = (base - qb).max(0.0);
    (0..n)
        .map(|_| {
            let u = uniform(state);
            let (bh, ch) = if u < qc {
                (false, true)
            } else if u < qc + qb {
                (true, false)
            } else if u < qc + qb + both {
                (true, true)
            } else {
                (false, false)
            };
            let b = if bh { 5 } else { lesser_score(state) };
            let c = match (bh, ch) {
                (_, true) => 5,
                (false, false) if uniform(state) < 0.8 => b,
                _ => lesser_score(state),
            };
            c - b
        })
        .collect()
}

fn replicate_score(opts: &Opts, n: usize, base: f64, delta: f64, seed: u64) -> Tally {
    let mut state = seed;
    let diffs = score_differences(opts, n, base, delta, &mut state);
    let mean = diffs.iter().sum::<i64>() as f64 / n as f64;
    let fixed = mean > opts.threshold + 1e-12 && paired_permutation_exact(&diffs) < opts.alpha;
    let mut test = SequentialTest::mean(
        -4.0,
        4.0,
        SequentialSettings {
            alpha: opts.alpha,
            threshold: opts.threshold,
            min_pairs: opts.min_prompts,
        },
    );
    let mut t = Tally {
        fixed_fired: u64::from(fixed),
        ..Tally::default()
    };
    for (i, &d) in diffs.iter().enumerate() {
        test.observe_difference(d as f64);
        let asked = i + 1;
        if asked % opts.batch != 0 || asked == n {
            continue;
        }
        if let Some(stop) = test.look() {
            t.seq_prompts = asked as u64;
            if stop == Stop::Drift {
                t.seq_fired = 1;
                t.stop_drift = 1;
            } else {
                t.stop_no_drift = 1;
            }
            return t;
        }
    }
    t.seq_fired = u64::from(test.look() == Some(Stop::Drift) || fixed);
    t.seq_prompts = n as u64;
    t
}

fn replicate(opts: &Opts, n: usize, base: f64, delta: f64, seed: u64) -> Tally {
    if opts.score {
        return replicate_score(opts, n, base, delta, seed);
    }
    let mut state = seed;
    let qb = opts.churn * base * (1.0 - base - delta);
    let qc = qb + delta;
    let pairs: Vec<(bool, bool)> = (0..n)
        .map(|_| {
            let u = uniform(&mut state);
            if u < qc {
                (false, true)
            } else if u < qc + qb {
                (true, false)
            } else {
                (false, false) // concordant: carries no information for either test
            }
        })
        .collect();
    let c = pairs.iter().filter(|p| p.1 && !p.0).count() as u64;
    let b = pairs.iter().filter(|p| p.0 && !p.1).count() as u64;
    let fixed = (c as f64 - b as f64) / n as f64 > opts.threshold + 1e-12
        && mcnemar_exact(b, c) < opts.alpha;

    let mut test = SequentialTest::rate(SequentialSettings {
        alpha: opts.alpha,
        threshold: opts.threshold,
        min_pairs: opts.min_prompts,
    });
    let mut t = Tally {
        fixed_fired: u64::from(fixed),
        ..Tally::default()
    };
    for (i, &(bb, cc)) in pairs.iter().enumerate() {
        test.observe_events(bb, cc);
        let asked = i + 1;
        if asked % opts.batch != 0 || asked == n {
            continue;
        }
        match test.look() {
            Some(Stop::Drift) => {
                t.seq_fired = 1;
                t.stop_drift = 1;
                t.seq_prompts = asked as u64;
                return t;
            }
            Some(Stop::NoDrift) => {
                t.stop_no_drift = 1;
                t.seq_prompts = asked as u64;
                return t;
            }
            None => {}
        }
    }
    // The last look is the full benchmark: an e-process crossing there, or the fixed test.
    t.seq_fired = u64::from(test.look() == Some(Stop::Drift) || fixed);
    t.seq_prompts = n as u64;
    t
}

fn main() {
    let mut opts = Opts {
        replicates: 10_000,
        seed: 17,
        alpha: 0.05,
        threshold: 0.05,
        batch: 10,
        min_prompts: 20,
        churn: 1.0,
        score: false,
    };
    let mut threshold = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, value: &str) -> T {
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value for {flag}: {value}"))
        }
        match flag.as_str() {
            "--replicates" => opts.replicates = num(flag, value),
            "--seed" => opts.seed = num(flag, value),
            "--alpha" => opts.alpha = num(flag, value),
            "--threshold" => threshold = Some(num(flag, value)),
            "--metric" => match value.as_str() {
                "rate" => opts.score = false,
                "score" => opts.score = true,
                _ => panic!("--metric takes rate or score"),
            },
            "--batch" => opts.batch = num(flag, value),
            "--min-prompts" => opts.min_prompts = num(flag, value),
            "--churn" => opts.churn = num(flag, value),
            _ => panic!("unknown flag {flag}"),
        }
    }
    assert!(opts.batch >= 1 && (0.0..=1.0).contains(&opts.churn));
    // The defaults of `[drift] harmfulness_rate` and `harmfulness_score`.
    opts.threshold = threshold.unwrap_or(if opts.score { 0.25 } else { 0.05 });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "metric {} replicates {} seed {} alpha {} threshold {} batch {} min_prompts {} churn {}",
        if opts.score { "score" } else { "rate" },
        opts.replicates,
        opts.seed,
        opts.alpha,
        opts.threshold,
        opts.batch,
        opts.min_prompts,
        opts.churn
    );
    println!();
    println!("| prompts | base | delta | fixed: fires | sequential: fires | difference | sequential: mean prompts | calls vs fixed | stopped for drift | stopped for no drift |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (si, &n) in SIZES.iter().enumerate() {
        for (bi, &base) in BASES.iter().enumerate() {
            for (di, &delta) in DELTAS.iter().enumerate() {
                let mut cfg_seed =
                    opts.seed ^ ((si as u64) << 48 | (bi as u64) << 40 | (di as u64) << 32);
                let cfg_seed = splitmix(&mut cfg_seed);
                let o = opts;
                // Each replicate has its own stream, so results do not depend on the threads.
                let total = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|k| {
                            s.spawn(move || {
                                let mut t = Tally::default();
                                for r in (k..o.replicates).step_by(threads) {
                                    let mut st =
                                        cfg_seed ^ (r as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
                                    t.add(replicate(&o, n, base, delta, splitmix(&mut st)));
                                }
                                t
                            })
                        })
                        .collect();
                    let mut total = Tally::default();
                    for h in handles {
                        total.add(h.join().expect("worker"));
                    }
                    total
                });
                let r = opts.replicates as f64;
                let (fixed, seq) = (total.fixed_fired as f64 / r, total.seq_fired as f64 / r);
                let prompts = total.seq_prompts as f64 / r;
                println!(
                    "| {n} | {base:.2} | +{delta:.2} | {:.4} | {:.4} | {:+.4} | {:.1} | {:.2}x | {:.4} | {:.4} |",
                    fixed,
                    seq,
                    seq - fixed,
                    prompts,
                    prompts / n as f64,
                    total.stop_drift as f64 / r,
                    total.stop_no_drift as f64 / r,
                );
            }
        }
    }
}
