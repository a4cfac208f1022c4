use super::pick::{argmax, sample};
use super::*;
use rand::Rng;

#[test]
fn the_guard_catches_loops_and_only_loops() {
    let g = RepetitionGuard {
        window: 12,
        max_period: 4,
    };
    let looping: Vec<u32> = [1, 2, 3].iter().cycle().take(20).copied().collect();
    assert!(g.stuck(&looping));
    assert!(g.stuck(&[7; 12]));
    let varied: Vec<u32> = (0..40).collect();
    assert!(!g.stuck(&varied));
    // A cycle longer than max_period is not caught.
    let long: Vec<u32> = (0..5).cycle().take(30).collect();
    assert!(!g.stuck(&long));
    assert!(!g.stuck(&[7; 11]), "shorter than the window");
    assert!(!RepetitionGuard {
        window: 0,
        max_period: 4
    }
    .stuck(&[7; 100]));
}

#[test]
fn argmax_takes_the_first_maximum() {
    assert_eq!(argmax(&[0.0f32, 3.0, 3.0, 1.0], |x| *x), 1);
    assert_eq!(argmax(&[-1.0f32], |x| *x), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN], |x| *x), 0);
    assert_eq!(argmax(&[f32::NAN, 2.0, f32::INFINITY, 5.0], |x| *x), 2);
    // Longer than the lanes, with the maximum in the remainder and ties.
    let mut long = vec![0.5f32; 40];
    long[37] = 9.0;
    long[38] = 9.0;
    assert_eq!(argmax(&long, |x| *x), 37);
    long[3] = 9.0;
    assert_eq!(argmax(&long, |x| *x), 3);
    let reference = |v: &[f32]| {
        let (mut best, mut value) = (0, f32::NEG_INFINITY);
        for (i, x) in v.iter().enumerate() {
            if *x > value {
                (best, value) = (i, *x);
            }
        }
        best as u32
    };
    let mut rng = StdRng::seed_from_u64(7);
    for len in [1, 15, 16, 17, 100, 49_152] {
        // Few distinct values, so that ties are common.
        let v: Vec<f32> = (0..len).map(|_| (rng.gen::<u8>() % 7) as f32).collect();
        assert_eq!(argmax(&v, |x| *x), reference(&v), "len {len}");
        let h: Vec<f16> = v.iter().map(|x| f16::from_f32(*x)).collect();
        assert_eq!(argmax(&h, |x| x.to_f32()), reference(&v), "f16, len {len}");
    }
}

#[test]
fn sampling_is_seeded_and_respects_top_p() {
    let logits = [0.0f32, 5.0, 4.9, -10.0];
    let s = Sampling {
        temperature: 1.0,
        top_p: 0.5,
        seed: 1,
    };
    let mut a = StdRng::seed_from_u64(3);
    // top_p 0.5 keeps only the most likely token.
    for _ in 0..20 {
        assert_eq!(sample(&logits, &s, &mut a), 1);
    }
    let s = Sampling {
        temperature: 1.0,
        top_p: 1.0,
        seed: 1,
    };
    let draw = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..50)
            .map(|_| sample(&logits, &s, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(9), draw(9));
    let d = draw(9);
    assert!(
        d.contains(&1) && d.contains(&2),
        "both likely tokens appear: {d:?}"
    );
    assert!(!d.contains(&3));
}
