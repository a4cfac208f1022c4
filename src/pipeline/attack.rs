//! How an attacked variant's prompt is asked
//! ([`crate::benchmark::attacks`]): the attack's system text after the
//! template's, and for a prefilling attack the opening the backend
//! continues.

use safedrift_judges::Message;

use super::Job;
use crate::backend::{Backend, BackendError};
use crate::benchmark::{Benchmark, Prompt};

/// The chat for `prompt` under the job's template and its attack, and the
/// opening of the answer when the attack prefills it (its length counted
/// by the backend: tokens on a local model, words on a served one).
pub(super) fn chat(
    job: &Job,
    prompt: &Prompt,
) -> Result<(Vec<Message>, Option<String>), BackendError> {
    let mut messages = job.template.messages(&prompt.text);
    let Some(attack) = &prompt.attack else {
        return Ok((messages, None));
    };
    attack.add_system(&mut messages);
    let Some(prefill) = &attack.prefill else {
        return Ok((messages, None));
    };
    let opening = job.backend.prefill_text(&prefill.text, prefill.units)?;
    messages.push(Message::new("assistant", opening.clone()));
    Ok((messages, Some(opening)))
}

/// Checks, before anything is asked, that `backend` (the `role` model,
/// `spec`) can ask every prompt of `benchmarks`: the one error names the
/// first variant that prefills the answer, its modifier and the backend.
pub fn check_prefill(
    benchmarks: &[Benchmark],
    backend: &dyn Backend,
    role: &str,
    spec: &str,
) -> Result<(), String> {
    let needs = benchmarks.iter().find_map(|b| {
        let attack = b.prompts.iter().find_map(|p| p.attack.as_ref())?;
        attack.prefill.as_ref()?;
        Some((b.name.as_str(), attack.modifier.as_str()))
    });
    let Some((name, modifier)) = needs else {
        return Ok(());
    };
    backend.prefill().map_err(|why| {
        format!(
            "benchmark `{name}` (attack modifier `{modifier}`) prefills the answer, which needs a \
             backend that continues an assistant message; the {role} `{spec}` cannot: {why}"
        )
    })
}
