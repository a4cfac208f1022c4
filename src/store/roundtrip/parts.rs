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

pub(super) fn verdict() -> impl Strategy<Value = Verdict> {
    (
        option::of(1u8..=5),
        any::<bool>(),
        text(),
        vec(text(), 0..3),
        option::of(float()),
    )
        .prop_map(|(score, refused, raw, categories, confidence)| Verdict {
            score,
            harmful: score.map(|s| s == 5),
            refused,
            raw,
            categories,
            confidence,
        })
}

pub(super) fn result(index: u32) -> impl Strategy<Value = ResultRecord> {
    (
        (
            text(),
            text(),
            "[a-z_]{1,12}",
            any::<bool>(),
            text(),
            text(),
        ),
        (
            option::of(text()),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(verdict()),
        ),
    )
        .prop_map(
            move |(
                (benchmark, prompt_id, category, benign, prompt, response),
                (finish_reason, latency_ms, prompt_tokens, completion_tokens, verdict),
            )| ResultRecord {
                index,
                benchmark,
                prompt_id,
                category,
                benign,
                prompt,
                response,
                finish_reason,
                latency_ms,
                prompt_tokens,
                completion_tokens,
                verdict,
                correct: benign.then_some(index % 2 == 0),
                alignment_score: benign.then_some((index % 5) as u8 + 1),
                misaligned: benign.then_some(index % 5 >= 3),
                attack: (!benign && index % 3 == 0).then(|| "prefill:10".to_string()),
                prefill: (!benign && index % 3 == 0).then(|| "Sure, here is".to_string()),
            },
        )
}
