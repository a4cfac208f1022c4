//! What makes two runs the same evaluation: the run identity (the model
//! and the plan) and the content identity (the model's files and the plan).

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Job;
use crate::backend::Decoding;

/// The digest of what makes two runs the same evaluation.
pub fn identity(job: &Job) -> String {
    #[derive(Serialize)]
    struct Identity<'a> {
        backend: String,
        model: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<&'a str>,
        template: String,
        decoding: &'a Decoding,
        benchmarks: Vec<&'a str>,
        judge: String,
        limit: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sequential: Option<&'a str>,
    }
    let id = Identity {
        backend: job.backend.identity(),
        model: &job.model.spec,
        revision: job.model.revision.as_deref(),
        template: job.template.sha256(),
        decoding: &job.decoding,
        benchmarks: job.benchmarks.iter().map(|b| b.sha256.as_str()).collect(),
        judge: job.judge.identity(),
        limit: job.limit,
        sequential: job.sequential.as_deref(),
    };
    let json = serde_json::to_vec(&id).expect("serializable");
    hex::encode(Sha256::digest(json))
}

/// What makes two runs the same evaluation of the same model content: the
/// plan of [`identity`] with the model's file digest in place of its name
/// and location (and of the backend's, which names the directory).
pub fn content_identity(job: &Job, content_digest: &str) -> String {
    #[derive(Serialize)]
    struct ContentIdentity<'a> {
        content: &'a str,
        template: String,
        decoding: &'a Decoding,
        benchmarks: Vec<&'a str>,
        judge: String,
        limit: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sequential: Option<&'a str>,
    }
    let id = ContentIdentity {
        content: content_digest,
        template: job.template.sha256(),
        decoding: &job.decoding,
        benchmarks: job.benchmarks.iter().map(|b| b.sha256.as_str()).collect(),
        judge: job.judge.identity(),
        limit: job.limit,
        sequential: job.sequential.as_deref(),
    };
    let json = serde_json::to_vec(&id).expect("serializable");
    hex::encode(Sha256::digest(json))
}
