//! Email targets (lettre over tokio with rustls).
//!
//! `smtp://host:port` talks plain SMTP (for local relays),
//! `smtp://host:port?tls=required` upgrades with STARTTLS and fails rather
//! than downgrade, `smtps://host:port` uses implicit TLS. The user comes from
//! `username` or the URL, the password from `password_env`/`password_file`.
//! The Message-ID is derived from the alert id, so a message re-sent after a
//! crash carries the same id and receivers can drop the copy.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::record::AlertRecord;
use super::render::{self, Example};
use super::target::TargetConfig;

/// The message for one alert.
pub fn message(
    target: &TargetConfig,
    rec: &AlertRecord,
    examples: &[Example],
) -> Result<Message, String> {
    let email = target.email()?;
    let from: Mailbox = email
        .from
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("`from`: {e}"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(render::subject(rec))
        .message_id(Some(format!("<{}@safedrift>", rec.id)));
    for to in &email.to {
        builder = builder.to(to.parse().map_err(|e| format!("`to`: {e}"))?);
    }
    builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(render::text(rec, examples)),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(render::html(rec, examples)),
                ),
        )
        .map_err(|e| format!("cannot build the message: {e}"))
}

/// The transport for a target's URL and credentials.
pub fn transport(target: &TargetConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let email = target.email()?;
    let mut url =
        url::Url::parse(&target.url()?).map_err(|_| "`url` is not a valid SMTP URL".to_string())?;
    let url_user = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let _ = url.set_username("");
    let mut builder = match &email.ca_file {
        None => AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
            .map_err(|e| format!("`url`: {e}"))?,
        Some(ca) => {
            // The URL's TLS mode, with a private CA added to the roots.
            let host = url.host_str().unwrap_or_default().to_string();
            let pem = std::fs::read(ca)
                .map_err(|e| format!("`ca_file`: cannot read {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                format!("`ca_file`: {} is not a PEM certificate: {e}", ca.display())
            })?;
            let params = TlsParameters::builder(host.clone())
                .add_root_certificate(cert)
                .build_rustls()
                .map_err(|e| format!("TLS: {e}"))?;
            let (tls, port) = if url.scheme() == "smtps" {
                (Tls::Wrapper(params), 465)
            } else {
                (Tls::Required(params), 587)
            };
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(url.port().unwrap_or(port))
                .tls(tls)
        }
    }
    .timeout(Some(target.timeout()));
    let password = email.password()?;
    let user = email.username.clone().or(url_user);
    match (user, password) {
        (Some(u), Some(p)) => builder = builder.credentials(Credentials::new(u, p)),
        (None, Some(_)) => {
            return Err(
                "a password is configured but no user (`username` or the URL's user)".into(),
            )
        }
        (Some(_), None) => {
            return Err(
                "a user is configured but no password (`password_env` or `password_file`)".into(),
            )
        }
        (None, None) => {}
    }
    Ok(builder.build())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("u={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Sends one alert. Errors are retriable descriptions (no secret in them).
pub async fn send(
    target: &TargetConfig,
    rec: &AlertRecord,
    examples: &[Example],
) -> Result<(), String> {
    let msg = message(target, rec, examples)?;
    let transport = transport(target)?;
    transport
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP: {e}"))
}
