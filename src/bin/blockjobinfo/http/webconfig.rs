//! `--web-config FILE`: the Prometheus exporter-toolkit's web configuration (the format node_exporter's
//! `--web.config.file` reads), checked whole before anything is served. Every mistake is one line naming the
//! file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

/// What the file says, once checked: TLS (through rustls), the users of basic authentication, extra response
/// headers and a request rate limit.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    /// User name to bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
    /// The files it was read from: the config and the certificate, key and CA files it names (watched for
    /// changes while serving).
    pub files: Vec<PathBuf>,
    pub strength: Strength,
    /// What is allowed but unwise (a bcrypt cost above 14), said once each time the config is read.
    pub warnings: Vec<String>,
}

/// How much a config protects: a config read again while serving may not lower any of it (a file caught
/// half-written could).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strength {
    pub tls: bool,
    /// 0: none asked; 1: verified if given; 2: required and verified.
    pub client_certs: u8,
    /// The lowest TLS version offered (12 or 13; 0 without TLS).
    pub min_tls: u8,
    pub passwords: bool,
}

impl Strength {
    /// What `new` gives up of `self`, if anything.
    pub fn lowered_by(&self, new: &Strength) -> Option<&'static str> {
        if self.tls && !new.tls {
            Some("it turns TLS off")
        } else if new.client_certs < self.client_certs {
            Some("it asks for fewer client certificates")
        } else if self.tls && new.min_tls < self.min_tls {
            Some("it lowers the minimum TLS version")
        } else if self.passwords && !new.passwords {
            Some("it turns basic authentication off")
        } else {
            None
        }
    }
}

/// What a file looks like from outside: a change to it (a rewrite, a rename over it, a new certificate) shows.
pub type Stamp = Vec<Option<(u64, u64, i64, i64, i64, i64, u64)>>;

/// The stamps of `files` now (None for one that cannot be looked at).
pub fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((
                m.dev(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.size(),
            ))
        })
        .collect()
}

/// A token bucket: one request every `interval`, with bursts of `burst`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

impl WebConfig {
    /// Plain HTTP, no authentication: what `--listen` serves without `--web-config`.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            users: BTreeMap::new(),
            headers: vec![],
            rate_limit: None,
            files: vec![],
            strength: Strength::default(),
            warnings: vec![],
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<Tls>,
    http_server_config: Option<Http>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    rate_limit: Option<Rate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    /// HTTP/2 is accepted in the file; the endpoint speaks HTTP/1.1, as Prometheus scrapes by default.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rate {
    interval: String,
    burst: u32,
}

/// A mistake in the file: the key it is about and what is wrong.
struct Bad(String, String);

fn bad(key: &str, why: impl std::fmt::Display) -> Bad {
    Bad(key.to_string(), why.to_string())
}

/// Reads and checks `path`. The error is the one line to print: `web config FILE: KEY: what is wrong`.
pub fn load(path: &Path) -> Result<WebConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("web config {}: cannot read it: {e}", path.display()))?;
    parse(&text, path)
}

/// Checks `text`, the contents of the web config at `path` (whose directory relative file names are in).
pub fn parse(text: &str, path: &Path) -> Result<WebConfig, String> {
    let at = |key: &str, why: &str| {
        if key.is_empty() {
            format!("web config {}: {why}", path.display())
        } else {
            format!("web config {}: {key}: {why}", path.display())
        }
    };
    // An empty file is an empty configuration, as in exporter-toolkit.
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            // The parser's own words and position, without its drawing of the source, and without the value it
            // found: a key or password at the wrong indentation must not end up in the journal.
            let why = e.without_snippet().to_string();
            at(
                "",
                &without_values(&one_line(why.strip_prefix("error: ").unwrap_or(&why))),
            )
        })?
    };
    // Relative file names are relative to the configuration's own directory, as in exporter-toolkit.
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut files = vec![path.to_path_buf()];
    if let Some(t) = &file.tls_server_config {
        files.extend(
            [&t.cert_file, &t.key_file, &t.client_ca_file]
                .into_iter()
                .flatten()
                .map(|f| dir.join(f)),
        );
    }
    let mut web = check(file, &dir).map_err(|Bad(key, why)| at(&key, &why))?;
    web.files = files;
    Ok(web)
}

/// A parser message with the values it quotes left out: serde names a found value after "invalid type: " or
/// "invalid value: " (`string "..."`, `integer `5``); keys (`unknown field `x``) stay.
fn without_values(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(at) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (i, len) = at;
        out.push_str(&rest[..i + len]);
        rest = &rest[i + len..];
        // The kind of value (`string`, `integer`, `map`), then its quoted text, if any.
        let kind_end = rest.find(['"', '`', ',']).unwrap_or(rest.len());
        out.push_str(rest[..kind_end].trim_end());
        rest = &rest[kind_end..];
        if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '`') {
            rest = rest[1..].find(q).map_or("", |end| &rest[end + 2..]);
        }
    }
    out.push_str(rest);
    // Anything else quoted with double quotes is a value too.
    let mut clean = String::new();
    let mut quoted = false;
    for c in out.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                clean.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                clean.push('"');
            }
            (_, true) => {}
            (c, false) => clean.push(c),
        }
    }
    clean
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check(file: File, dir: &Path) -> Result<WebConfig, Bad> {
    let mut warnings = vec![];
    for (user, hash) in &file.basic_auth_users {
        let key = format!("basic_auth_users.{user}");
        let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| {
            bad(
                &key,
                "not a bcrypt hash (make one with `htpasswd -nbBC 10 USER PASSWORD`)",
            )
        })?;
        // exporter-toolkit's bounds (and bcrypt's): below 4 no check would run (every password refused at
        // once), above 31 there is no such cost.
        let cost = parts.get_cost();
        if !(MIN_COST..=MAX_COST).contains(&cost) {
            return Err(bad(
                &key,
                format!("bcrypt cost {cost} is outside {MIN_COST} to {MAX_COST}"),
            ));
        }
        if cost > WARN_COST {
            warnings.push(format!(
                "{key}: bcrypt cost {cost} makes each check take about {} (10 takes tens of milliseconds): a \
                 scrape may time out while its password is checked",
                rough_duration(cost)
            ));
        }
    }
    let mut headers = vec![];
    if let Some(http) = &file.http_server_config {
        for (name, value) in &http.headers {
            headers.push((name.clone(), header_value(name, value)?));
        }
    }
    let rate_limit = match &file.rate_limit {
        Some(r) => {
            let interval = parse_duration(&r.interval)
                .ok_or_else(|| bad("rate_limit.interval", "not a duration such as 1s or 100ms"))?;
            (!interval.is_zero()).then_some(RateLimit {
                interval,
                burst: r.burst.max(1),
            })
        }
        None => None,
    };
    let strength = Strength {
        tls: file.tls_server_config.is_some(),
        client_certs: match file
            .tls_server_config
            .as_ref()
            .and_then(|t| t.client_auth_type.as_deref())
        {
            Some("RequireAndVerifyClientCert") => 2,
            Some("VerifyClientCertIfGiven") => 1,
            _ => 0,
        },
        min_tls: match &file.tls_server_config {
            Some(t) if t.min_version.as_deref() == Some("TLS13") => 13,
            Some(_) => 12,
            None => 0,
        },
        passwords: !file.basic_auth_users.is_empty(),
    };
    let tls = match file.tls_server_config {
        Some(t) => Some(Arc::new(tls(t, dir)?)),
        None => None,
    };
    Ok(WebConfig {
        tls,
        users: file.basic_auth_users,
        headers,
        rate_limit,
        files: vec![],
        strength,
        warnings,
    })
}

/// bcrypt costs the web config accepts, and the cost above which it warns.
pub const MIN_COST: u32 = 4;
pub const MAX_COST: u32 = 31;
const WARN_COST: u32 = 14;

/// About how long one check at `cost` takes (cost 10: 50 ms here; each step doubles it).
fn rough_duration(cost: u32) -> String {
    let ms = 50u64 << cost.saturating_sub(10).min(40);
    if ms < 60_000 {
        format!("{} s", (ms + 500) / 1000)
    } else if ms < 3_600_000 {
        format!("{} minutes", ms / 60_000)
    } else {
        format!("{} hours", ms / 3_600_000)
    }
}

/// exporter-toolkit's headers and values: only these may be set.
fn header_value(name: &str, value: &str) -> Result<String, Bad> {
    let allowed: &[&str] = match name {
        "Strict-Transport-Security" | "X-XSS-Protection" | "Content-Security-Policy" => &[],
        "X-Content-Type-Options" => &["nosniff"],
        "X-Frame-Options" => &["deny", "sameorigin"],
        _ => {
            return Err(bad(
                &format!("http_server_config.headers.{name}"),
                "this header cannot be set",
            ))
        }
    };
    if !allowed.is_empty() && !allowed.contains(&value) {
        return Err(bad(
            &format!("http_server_config.headers.{name}"),
            format!("not one of {allowed:?}"),
        ));
    }
    // A value HTTP cannot carry (a control character, a line break) would be dropped from every answer: the
    // operator's HSTS or CSP would silently vanish.
    if hyper::header::HeaderValue::from_str(value).is_err() {
        return Err(bad(
            &format!("http_server_config.headers.{name}"),
            "not a value an HTTP header can carry (control characters, line breaks or non-ASCII)",
        ));
    }
    Ok(value.to_string())
}

/// Go-style durations, as the format writes them: `500ms`, `1s`, `1m30s`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(total);
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * seconds).ok()?;
        rest = &rest[unit..];
    }
    Some(total)
}

/// PEM text from the file named by `file_key` or inline under `inline_key` (one of them, not both).
fn pem(
    dir: &Path,
    file: &Option<String>,
    file_key: &str,
    inline: &Option<String>,
    inline_key: &str,
) -> Result<Option<(Vec<u8>, String)>, Bad> {
    match (file, inline) {
        (Some(_), Some(_)) => Err(bad(inline_key, format!("give {file_key} or {inline_key}, not both"))),
        (Some(f), None) => {
            let p: PathBuf = dir.join(f);
            std::fs::read(&p)
                .map(|b| Some((b, file_key.to_string())))
                .map_err(|e| bad(file_key, format!("cannot read {}: {e}", p.display())))
        }
        (None, Some(text)) => Ok(Some((text.as_bytes().to_vec(), inline_key.to_string()))),
        (None, None) => Ok(None),
    }
}

fn certificates(bytes: &[u8], key: &str) -> Result<Vec<CertificateDer<'static>>, Bad> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(key, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn tls(t: Tls, dir: &Path) -> Result<ServerConfig, Bad> {
    let k = |name: &str| format!("tls_server_config.{name}");
    let (cert, cert_key) = pem(dir, &t.cert_file, &k("cert_file"), &t.cert, &k("cert"))?
        .ok_or_else(|| bad(&k("cert_file"), "required with tls_server_config (or cert, inline)"))?;
    let (key, key_key) = pem(dir, &t.key_file, &k("key_file"), &t.key, &k("key"))?
        .ok_or_else(|| bad(&k("key_file"), "required with tls_server_config (or key, inline)"))?;
    let chain = certificates(&cert, &cert_key)?;
    let private = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| bad(&key_key, format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;

    let mut provider = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        provider.cipher_suites = cipher_suites(&provider, &t.cipher_suites)?;
    }
    if !t.curve_preferences.is_empty() {
        provider.kx_groups = curves(&provider, &t.curve_preferences)?;
    }
    let versions = versions(t.min_version.as_deref(), t.max_version.as_deref())?;
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| {
            bad(
                &k("cipher_suites"),
                format!("no cipher suite left for the TLS versions chosen: {e}"),
            )
        })?;
    if !t.client_allowed_sans.is_empty() {
        return Err(bad(&k("client_allowed_sans"), "not supported by blockjobinfo"));
    }
    let ca = pem(
        dir,
        &t.client_ca_file,
        &k("client_ca_file"),
        &t.client_ca,
        &k("client_ca"),
    )?;
    // As exporter-toolkit: a client CA with no policy is a mistake (the operator means to require certificates,
    // and would get none asked for).
    if ca.is_some() && t.client_auth_type.is_none() {
        return Err(bad(
            &k("client_auth_type"),
            "a client CA is set without a client auth policy: set it (RequireAndVerifyClientCert to require \
             client certificates)",
        ));
    }
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let (ca, ca_key) =
                ca.ok_or_else(|| bad(&k("client_ca_file"), format!("required with client_auth_type {auth}")))?;
            let mut roots = RootCertStore::empty();
            for c in certificates(&ca, &ca_key)? {
                roots
                    .add(c)
                    .map_err(|e| bad(&ca_key, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), builder.crypto_provider().clone());
            let verifier = if auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| bad(&ca_key, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(bad(
                &k("client_auth_type"),
                format!("{auth} accepts certificates nobody verified: use RequireAndVerifyClientCert"),
            ))
        }
        other => {
            return Err(bad(
                &k("client_auth_type"),
                format!("'{other}' is not NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "does not match the certificate".to_string(),
            e => format!("unusable: {e}"),
        };
        bad(&key_key, why)
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok(config)
}

fn versions(min: Option<&str>, max: Option<&str>) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Bad> {
    let rank = |v: &str, key: &str| match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(bad(key, format!("{v} is not offered (rustls speaks TLS12 and TLS13)"))),
        other => Err(bad(key, format!("'{other}' is not TLS12 or TLS13"))),
    };
    let lo = min.map_or(Ok(12), |v| rank(v, "tls_server_config.min_version"))?;
    let hi = max.map_or(Ok(13), |v| rank(v, "tls_server_config.max_version"))?;
    if lo > hi {
        return Err(bad("tls_server_config.min_version", "is above max_version"));
    }
    Ok([(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(n, _)| (lo..=hi).contains(n))
        .map(|(_, v)| v)
        .collect())
}

/// Go's names of TLS 1.2 suites, as the format writes them; TLS 1.3's suites are always offered, as in Go.
fn cipher_suites(p: &CryptoProvider, names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, Bad> {
    let mut chosen: Vec<rustls::SupportedCipherSuite> = p
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .copied()
        .collect();
    for name in names {
        // Go also accepts the suites' names without `_SHA256` for ChaCha20.
        let wanted = match name.as_str() {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            n => n,
        };
        let suite = p
            .cipher_suites
            .iter()
            .find(|s| format!("{:?}", s.suite()) == wanted)
            .ok_or_else(|| {
                bad(
                    "tls_server_config.cipher_suites",
                    format!("{name} is not a suite rustls offers"),
                )
            })?;
        chosen.push(*suite);
    }
    Ok(chosen)
}

fn curves(p: &CryptoProvider, names: &[String]) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, Bad> {
    names
        .iter()
        .map(|name| {
            let group = match name.as_str() {
                "X25519" => rustls::NamedGroup::X25519,
                "CurveP256" => rustls::NamedGroup::secp256r1,
                "CurveP384" => rustls::NamedGroup::secp384r1,
                _ => {
                    return Err(bad(
                        "tls_server_config.curve_preferences",
                        format!("{name} is not X25519, CurveP256 or CurveP384"),
                    ))
                }
            };
            p.kx_groups
                .iter()
                .find(|g| g.name() == group)
                .copied()
                .ok_or_else(|| bad("tls_server_config.curve_preferences", format!("{name} is not offered")))
        })
        .collect()
}

/// The body of the web config fuzz target (fuzz/) and of its regressions (tests/fuzz_regressions.rs): any
/// text is a config or one line that says what is wrong, never a panic.
#[allow(dead_code)] // not called by the tool itself
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse(&text, Path::new("/nonexistent/web.yml")) {
        assert!(!e.contains('\n'), "more than one line: {e:?}");
        assert!(e.starts_with("web config /nonexistent/web.yml: "), "{e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::Strength;

    #[test]
    fn a_config_read_again_may_not_protect_less() {
        let full = Strength {
            tls: true,
            client_certs: 2,
            min_tls: 13,
            passwords: true,
        };
        assert_eq!(full.lowered_by(&full), None);
        let less = |f: fn(&mut Strength)| {
            let mut s = full;
            f(&mut s);
            full.lowered_by(&s)
        };
        assert_eq!(less(|s| s.tls = false), Some("it turns TLS off"));
        assert_eq!(
            less(|s| s.client_certs = 1),
            Some("it asks for fewer client certificates")
        );
        assert_eq!(less(|s| s.min_tls = 12), Some("it lowers the minimum TLS version"));
        assert_eq!(less(|s| s.passwords = false), Some("it turns basic authentication off"));
        // More is always taken.
        assert_eq!(Strength::default().lowered_by(&full), None);
    }

    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
