//! The verdict cache: `verdicts`, sha256(judge identity, prompt,
//! response) -> [`Verdict`], so the same answer is never judged twice. A
//! judge's misalignment grades of off-domain answers share the tree, keyed
//! by sha256(judge identity + [`ALIGNMENT`], prompt, response) ->
//! [`AlignmentVerdict`]: no identity ends with that suffix, so the two
//! kinds of key never meet.

use safedrift_judges::{AlignmentVerdict, Verdict};
use sha2::{Digest, Sha256};

use super::{encode, Store, StoreError};

/// Appended to a judge's identity in the key of its misalignment grades.
const ALIGNMENT: &str = "\0alignment";

impl Store {
    fn verdict_key(judge: &str, prompt: &str, response: &str) -> Vec<u8> {
        let mut h = Sha256::new();
        for part in [judge, prompt, response] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_vec()
    }

    /// A cached verdict of this judge on this exact answer.
    pub fn cached_verdict(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
    ) -> Result<Option<Verdict>, StoreError> {
        let key = Self::verdict_key(judge, prompt, response);
        match self.verdicts.get(&key)? {
            Some(v) => Ok(self.read(&self.verdicts, &key, &v)),
            None => Ok(None),
        }
    }

    pub fn cache_verdict(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
        verdict: &Verdict,
    ) -> Result<(), StoreError> {
        self.verdicts
            .insert(Self::verdict_key(judge, prompt, response), encode(verdict))?;
        self.touched();
        Ok(())
    }

    /// A cached misalignment grade of this judge on this exact answer.
    pub fn cached_alignment(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
    ) -> Result<Option<AlignmentVerdict>, StoreError> {
        let key = Self::verdict_key(&format!("{judge}{ALIGNMENT}"), prompt, response);
        match self.verdicts.get(&key)? {
            Some(v) => Ok(self.read(&self.verdicts, &key, &v)),
            None => Ok(None),
        }
    }

    pub fn cache_alignment(
        &self,
        judge: &str,
        prompt: &str,
        response: &str,
        verdict: &AlignmentVerdict,
    ) -> Result<(), StoreError> {
        let key = Self::verdict_key(&format!("{judge}{ALIGNMENT}"), prompt, response);
        self.verdicts.insert(key, encode(verdict))?;
        self.touched();
        Ok(())
    }
}
