//! Strategies for the parts of a run record.

use super::*;

pub(super) fn template() -> impl Strategy<Value = Template> {
    (
        text(),
        option::of(text()),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(name, system, user_prefix, user_suffix)| Template {
            name,
            system,
            user_prefix,
            user_suffix,
        })
}

pub(super) fn decoding() -> impl Strategy<Value = Decoding> {
    (
        any::<u32>(),
        float(),
        option::of(float()),
        option::of(any::<u64>()),
    )
        .prop_map(|(max_new_tokens, temperature, top_p, seed)| Decoding {
            max_new_tokens,
            temperature,
            top_p,
            seed,
        })
}

pub(super) fn audit() -> impl Strategy<Value = Audit> {
    (
        text(),
        (
            any::<usize>(),
            any::<usize>(),
            option::of(float()),
            any::<bool>(),
        ),
        (
            float(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
        ),
    )
        .prop_map(
            |(
                teacher,
                (checked, agreed, agreement, below_threshold),
                (min_agreement, sampled, unsure, harmful_agreed, teacher_unscored),
            )| Audit {
                teacher,
                checked,
                agreed,
                agreement,
                below_threshold,
                min_agreement,
                sampled,
                unsure,
                harmful_agreed,
                teacher_unscored,
            },
        )
}
