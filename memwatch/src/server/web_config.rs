//! `--web.config.file`: Prometheus exporter-toolkit's web config (YAML) with TLS
//! (`tls_server_config`), basic auth (`basic_auth_users`, bcrypt hashes) and fixed
//! response headers (`http_server_config.headers`).
//!
//! `parse` is pure (text in, checked config out: the fuzz target calls it);
//! `WebConfig::activate` reads the files it names and builds what the server uses;
//! `WebConfigHandle` holds the active one and swaps in a new one on `reload` (for new
//! connections; on an error the old one stays).

use parking_lot::RwLock;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;
use tokio_rustls::rustls::{
    self,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use super::auth::Auth;

/// The file as written (exporter-toolkit's keys; unknown keys are an error).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// exporter-toolkit's rate limiter: not supported (rejected by name).
    #[serde(default)]
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Go crypto/tls settings with no rustls counterpart here: rejected by name.
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// memwatch speaks HTTP/1.1 only; both values are accepted.
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Where a PEM comes from: a file (relative to the web config's folder) or inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    /// The PEM's bytes; `key` names the setting in errors.
    fn read(&self, key: &str) -> Result<Vec<u8>, String> {
        match self {
            Pem::File(p) => std::fs::read(p)
                .map_err(|e| format!("tls_server_config.{key}: cannot read {}: {e}", p.display())),
            Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        }
    }
}

/// exporter-toolkit's `client_auth_type` (Go's tls.ClientAuthType names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    const NAMES: &'static str = "NoClientCert, RequestClientCert, RequireAnyClientCert, \
                                 VerifyClientCertIfGiven, RequireAndVerifyClientCert";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // "RequireClientCert": exporter-toolkit's older spelling.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

/// A TLS protocol version rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(key: &str, s: &str) -> Result<Self, String> {
        match s {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            "TLS10" | "TLS11" => Err(format!(
                "tls_server_config.{key}: {s} is not supported (memwatch speaks TLS 1.2 and \
                 1.3): use TLS12 or TLS13"
            )),
            _ => Err(format!(
                "tls_server_config.{key}: {s:?} is not a TLS version: use TLS12 or TLS13"
            )),
        }
    }
}

/// The TLS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub prefer_server_cipher_suites: bool,
}

/// A web config file, checked (nothing read from disk yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<Tls>,
    /// user → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Fixed response headers, names as exporter-toolkit spells them.
    pub headers: Vec<(String, String)>,
}

/// The headers exporter-toolkit lets a web config set, with their allowed values
/// (empty: any value).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Parses and checks a web config; relative file names are taken relative to
/// `base_dir` (the file's folder). Reads nothing. The error names the key.
pub fn parse(text: &str, base_dir: &Path) -> Result<WebConfig, String> {
    // An empty file (or only comments) is an empty config, as in exporter-toolkit.
    let file: File = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        File::default()
    } else {
        serde_norway::from_str(text).map_err(|e| e.to_string())?
    };
    if file.rate_limit.is_some() {
        return Err(
            "rate_limit is not supported by memwatch: remove it (web.max_requests \
                    and web.max_connections in memwatch's config bound the load)"
                .into(),
        );
    }
    let tls = match file.tls_server_config {
        None => None,
        Some(t) => tls(t, base_dir)?,
    };
    let mut users = BTreeMap::new();
    for (user, hash) in file.basic_auth_users.unwrap_or_default() {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(format!(
                "basic_auth_users: user {user:?} can't be sent in basic auth (empty, or a \
                 ':' or control character in it)"
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(format!(
                "basic_auth_users.{user}: not a bcrypt hash (\"$2y$10$...\"; make one with \
                 `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
            ));
        }
        users.insert(user, hash);
    }
    let mut headers = Vec::new();
    let http = file.http_server_config.unwrap_or_default();
    let _ = http.http2;
    for (name, value) in http.headers.unwrap_or_default() {
        let Some((canonical, allowed)) =
            HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name))
        else {
            let names: Vec<&str> = HEADERS.iter().map(|h| h.0).collect();
            return Err(format!(
                "http_server_config.headers: {name:?} can not be configured (allowed: {})",
                names.join(", ")
            ));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(format!(
                "http_server_config.headers.{canonical}: {value:?} is not one of {allowed:?}"
            ));
        }
        if HeaderValue::from_str(&value).is_err() {
            return Err(format!(
                "http_server_config.headers.{canonical}: {value:?} is not a valid header value \
                 (control characters?)"
            ));
        }
        headers.push((canonical.to_string(), value));
    }
    Ok(WebConfig {
        tls,
        users,
        headers,
    })
}

/// The TLS section, checked; None when it sets nothing (plain HTTP, as in
/// exporter-toolkit).
fn tls(t: TlsFile, base: &Path) -> Result<Option<Tls>, String> {
    for (set, key, why) in [
        (
            t.cipher_suites.is_some(),
            "cipher_suites",
            "rustls offers only its own AEAD suites",
        ),
        (
            t.curve_preferences.is_some(),
            "curve_preferences",
            "rustls picks among X25519, P-256 and P-384",
        ),
        (
            t.client_allowed_sans.is_some(),
            "client_allowed_sans",
            "use a client CA that signs only the allowed clients",
        ),
    ] {
        if set {
            return Err(format!(
                "tls_server_config.{key} is not supported by memwatch ({why}): remove it"
            ));
        }
    }
    let enabled = t.cert_file.is_some()
        || t.key_file.is_some()
        || t.cert.is_some()
        || t.key.is_some()
        || t.client_ca_file.is_some()
        || t.client_ca.is_some()
        || t.client_auth_type.is_some();
    if !enabled {
        return Ok(None);
    }
    let pem = |file: Option<String>, inline: Option<String>, fk: &str, ik: &str| match (
        file.filter(|f| !f.is_empty()),
        inline.filter(|i| !i.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: set one of {fk} and {ik}, not both"
        )),
        (Some(f), None) => Ok(Some(Pem::File(base.join(f)))),
        (None, Some(i)) => Ok(Some(Pem::Inline(i))),
        (None, None) => Ok(None),
    };
    let cert = pem(t.cert_file, t.cert, "cert_file", "cert")?
        .ok_or("tls_server_config.cert_file is missing (or give the PEM inline as cert)")?;
    let key = pem(t.key_file, t.key, "key_file", "key")?
        .ok_or("tls_server_config.key_file is missing (or give the PEM inline as key)")?;
    let client_ca = pem(t.client_ca_file, t.client_ca, "client_ca_file", "client_ca")?;
    let auth_name = t.client_auth_type.unwrap_or_default();
    let client_auth = ClientAuth::parse(&auth_name).ok_or_else(|| {
        format!(
            "tls_server_config.client_auth_type: {auth_name:?} is not one of {}",
            ClientAuth::NAMES
        )
    })?;
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(
            "tls_server_config.client_ca_file is set but client_auth_type is \
                    NoClientCert: set client_auth_type (e.g. RequireAndVerifyClientCert)"
                .into(),
        );
    }
    if client_ca.is_none() && client_auth.verifies() {
        return Err(format!(
            "tls_server_config.client_ca_file is required with client_auth_type \
             {auth_name}: the CA that signs the clients' certificates"
        ));
    }
    let min_version = match t.min_version.as_deref() {
        None | Some("") => TlsVersion::Tls12,
        Some(v) => TlsVersion::parse("min_version", v)?,
    };
    let max_version = match t.max_version.as_deref() {
        None | Some("") => TlsVersion::Tls13,
        Some(v) => TlsVersion::parse("max_version", v)?,
    };
    if min_version > max_version {
        return Err("tls_server_config.min_version is above max_version".into());
    }
    Ok(Some(Tls {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

/// A web config ready to serve with: the TLS config built from the files it names,
/// the users, the headers.
pub struct Active {
    pub tls: Option<Arc<ServerConfig>>,
    /// None: no authentication.
    pub auth: Option<Arc<Auth>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What it was built from, to tell what a reload changed.
    config: WebConfig,
    pem_digest: Vec<u8>,
}

impl Active {
    /// Plain HTTP, no auth, no headers.
    pub fn plain() -> Self {
        Self {
            tls: None,
            auth: None,
            headers: Vec::new(),
            config: WebConfig::default(),
            pem_digest: Vec::new(),
        }
    }
}

impl WebConfig {
    /// Reads the certificate, key and CA files and builds the server's TLS config.
    pub fn activate(&self) -> Result<Active, String> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(Arc::new(server_config(t, &mut digest)?)),
        };
        let auth = (!self.users.is_empty())
            .then(|| Auth::new(self.users.clone()))
            .transpose()?
            .map(Arc::new);
        let mut headers = Vec::new();
        for (n, v) in &self.headers {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|e| format!("http_server_config.headers: {n:?}: {e}"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| format!("http_server_config.headers.{n}: {e}"))?;
            headers.push((name, value));
        }
        Ok(Active {
            tls,
            auth,
            headers,
            config: self.clone(),
            pem_digest: digest.finish().as_ref().to_vec(),
        })
    }
}

/// rustls with the ring provider, from the checked TLS settings; the PEMs' bytes go
/// into `digest`.
fn server_config(t: &Tls, digest: &mut ring::digest::Context) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = t.cert.read("cert_file")?;
    let key_pem = t.key.read("key_file")?;
    digest.update(&cert_pem);
    digest.update(&key_pem);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.cert_file: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("tls_server_config.cert_file: no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls_server_config.key_file: no PEM private key in it: {e}"))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let roots = match &t.client_ca {
        None => None,
        Some(ca) => {
            let pem = ca.read("client_ca_file")?;
            digest.update(&pem);
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| {
                    format!("tls_server_config.client_ca_file: not a PEM certificate: {e}")
                })?;
                roots.add(c).map_err(|e| {
                    format!("tls_server_config.client_ca_file: not a usable CA certificate: {e}")
                })?;
            }
            if roots.is_empty() {
                return Err("tls_server_config.client_ca_file: no certificate in it".into());
            }
            Some(Arc::new(roots))
        }
    };
    let verifier: Arc<dyn ClientCertVerifier> = match (t.client_auth, roots) {
        (ClientAuth::NoClientCert, _) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::RequestClientCert, _) => Arc::new(AnyClientCert {
            mandatory: false,
            provider: provider.clone(),
        }),
        (ClientAuth::RequireAnyClientCert, _) => Arc::new(AnyClientCert {
            mandatory: true,
            provider: provider.clone(),
        }),
        (auth, Some(roots)) => {
            let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let b = if auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?
        }
        (_, None) => return Err("tls_server_config.client_ca_file is required".into()),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config.min_version: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("tls_server_config: cert_file and key_file don't make a key pair: {e}")
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ignore_client_order = t.prefer_server_cipher_suites;
    Ok(cfg)
}

/// RequestClientCert and RequireAnyClientCert: a client certificate is asked for (and
/// with the latter required) but not checked against a CA; the handshake signature
/// still proves the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads and parses a web config file and builds it; the error names the file.
pub fn load(path: &Path) -> Result<Active, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read web config file {name}: {e}"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base)
        .and_then(|c| c.activate())
        .map_err(|e| format!("invalid web config file {name}: {e}"))
}

/// What a reload changed (empty: nothing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed(pub Vec<&'static str>);

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("nothing changed")
        } else {
            write!(f, "changed: {}", self.0.join(", "))
        }
    }
}

/// The active web config, shared by the server (each new connection takes the one
/// active when it is accepted) and whoever reloads it (SIGHUP).
#[derive(Clone)]
pub struct WebConfigHandle {
    path: Option<PathBuf>,
    current: Arc<RwLock<Arc<Active>>>,
    stats: Arc<super::limits::Stats>,
}

impl WebConfigHandle {
    /// Loads `path` (None or empty: plain HTTP, no auth); the error names the file and
    /// the key.
    pub fn load(path: Option<&Path>, stats: Arc<super::limits::Stats>) -> Result<Self, String> {
        let path = path
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf);
        let active = match &path {
            None => Active::plain(),
            Some(p) => load(p)?,
        };
        Ok(Self {
            path,
            current: Arc::new(RwLock::new(Arc::new(active))),
            stats,
        })
    }

    /// The web config file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The config new connections get.
    pub fn current(&self) -> Arc<Active> {
        self.current.read().clone()
    }

    /// Re-reads the file and the files it names; when all is well, new connections get
    /// the new config (open ones keep theirs). On an error the old config stays and
    /// the error names the file and the key.
    pub fn reload(&self) -> Result<Changed, String> {
        let Some(path) = &self.path else {
            return Ok(Changed::default());
        };
        let new = match load(path) {
            Ok(a) => a,
            Err(e) => {
                self.stats.reload(false);
                return Err(e);
            }
        };
        self.stats.reload(true);
        let old = self.current();
        let mut changed = Vec::new();
        if old.config.tls != new.config.tls || old.pem_digest != new.pem_digest {
            changed.push("tls_server_config");
        }
        if old.config.users != new.config.users {
            changed.push("basic_auth_users");
        }
        if old.config.headers != new.config.headers {
            changed.push("http_server_config.headers");
        }
        *self.current.write() = Arc::new(new);
        Ok(Changed(changed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real bcrypt hash (of "pw", cost 4: quick).
    fn hash() -> String {
        bcrypt::hash("pw", 4).unwrap()
    }

    fn p(text: &str) -> Result<WebConfig, String> {
        parse(text, Path::new("/etc/memwatch"))
    }

    #[test]
    fn empty_file_is_plain_http() {
        assert_eq!(p("").unwrap(), WebConfig::default());
        assert_eq!(p("# nothing\n\n").unwrap(), WebConfig::default());
        assert_eq!(p("tls_server_config: {}\n").unwrap(), WebConfig::default());
    }

    #[test]
    fn full_file() {
        let c = p(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nhttp_server_config:\n  http2: true\n  headers:\n    \
             X-Frame-Options: deny\n    Content-Security-Policy: \"default-src 'self'\"\n\
             basic_auth_users:\n  alice: {}\n",
            hash()
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert, Pem::File("/etc/memwatch/server.crt".into()));
        assert_eq!(t.key, Pem::File("/abs/server.key".into()));
        assert_eq!(t.client_ca, Some(Pem::File("/etc/memwatch/ca.crt".into())));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.max_version, TlsVersion::Tls13);
        assert!(c.users["alice"].starts_with("$2"));
        assert_eq!(
            c.headers,
            vec![
                (
                    "Content-Security-Policy".to_string(),
                    "default-src 'self'".to_string()
                ),
                ("X-Frame-Options".to_string(), "deny".to_string()),
            ]
        );
    }

    #[test]
    fn every_client_auth_type() {
        for (name, want) in [
            ("NoClientCert", ClientAuth::NoClientCert),
            ("RequestClientCert", ClientAuth::RequestClientCert),
            ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
            ("RequireClientCert", ClientAuth::RequireAnyClientCert),
            (
                "VerifyClientCertIfGiven",
                ClientAuth::VerifyClientCertIfGiven,
            ),
            (
                "RequireAndVerifyClientCert",
                ClientAuth::RequireAndVerifyClientCert,
            ),
        ] {
            let ca = if want.verifies() {
                "  client_ca_file: ca\n"
            } else {
                ""
            };
            let c = p(&format!(
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: {name}\n{ca}"
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.tls.unwrap().client_auth, want, "{name}");
        }
    }

    /// Each bad file, and a word its error must contain (the key, or the value).
    #[test]
    fn bad_files_name_the_key() {
        let tls = "tls_server_config:\n  cert_file: c\n  key_file: k\n";
        for (text, want) in [
            (
                "tls_server_config:\n  cert_fil: c\n".to_string(),
                "cert_fil",
            ),
            (
                "tls_server_conf:\n  cert_file: c\n".to_string(),
                "tls_server_conf",
            ),
            ("http_server_config:\n  header: {}\n".to_string(), "header"),
            (
                format!("{tls}  client_auth_type: Maybe\n"),
                "client_auth_type",
            ),
            (format!("{tls}  min_version: TLS11\n"), "min_version"),
            (format!("{tls}  min_version: TLS14\n"), "min_version"),
            (
                format!("{tls}  max_version: TLS12\n  min_version: TLS13\n"),
                "max_version",
            ),
            (format!("{tls}  client_ca_file: ca\n"), "client_auth_type"),
            (
                format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                "client_ca_file",
            ),
            (
                format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
                "cipher_suites",
            ),
            (
                format!("{tls}  curve_preferences: [X25519]\n"),
                "curve_preferences",
            ),
            (
                format!("{tls}  client_allowed_sans: [a]\n"),
                "client_allowed_sans",
            ),
            (format!("{tls}  cert: inline\n"), "cert_file and cert"),
            (
                "tls_server_config:\n  key_file: k\n".to_string(),
                "cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n".to_string(),
                "key_file",
            ),
            (
                "basic_auth_users:\n  alice: hunter2\n".to_string(),
                "basic_auth_users.alice",
            ),
            (
                format!("basic_auth_users:\n  \"a:b\": {}\n", hash()),
                "basic_auth_users",
            ),
            (
                "http_server_config:\n  headers:\n    Set-Cookie: x\n".to_string(),
                "Set-Cookie",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".to_string(),
                "X-Frame-Options",
            ),
            (
                "http_server_config:\n  headers:\n    X-XSS-Protection: \"a\\nb\"\n".to_string(),
                "X-XSS-Protection",
            ),
            ("rate_limit:\n  burst: 1\n".to_string(), "rate_limit"),
            (
                "tls_server_config: [1, 2]\n".to_string(),
                "tls_server_config",
            ),
            ("- just\n- a list\n".to_string(), "sequence"),
        ] {
            let e = p(&text).expect_err(&text);
            assert!(e.contains(want), "{text:?}: {e:?} does not name {want:?}");
        }
    }

    #[test]
    fn missing_files_are_named_at_activation() {
        let c = p("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k\n").unwrap();
        let e = c.activate().err().unwrap();
        assert!(
            e.contains("cert_file") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
        let e = load(Path::new("/nonexistent/web.yml")).err().unwrap();
        assert!(e.contains("/nonexistent/web.yml"), "{e}");
    }

    #[test]
    fn reload_swaps_in_a_good_file_and_keeps_the_old_on_error() {
        let dir = std::env::temp_dir().join(format!("memwatch-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        let users = |u: &str| format!("basic_auth_users:\n  {u}: {}\n", hash());
        std::fs::write(&f, users("alice")).unwrap();
        let stats = super::super::limits::Stats::new();
        let h = WebConfigHandle::load(Some(&f), stats).unwrap();
        let first = h.current();
        assert!(first.auth.is_some() && first.tls.is_none());
        assert_eq!(h.reload().unwrap(), Changed::default());
        std::fs::write(
            &f,
            format!(
                "{}http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
                users("bob")
            ),
        )
        .unwrap();
        assert_eq!(
            h.reload().unwrap(),
            Changed(vec!["basic_auth_users", "http_server_config.headers"])
        );
        assert_eq!(h.current().headers.len(), 1);
        std::fs::write(&f, "basic_auth_users:\n  carol: nothash\n").unwrap();
        let e = h.reload().unwrap_err();
        assert!(
            e.contains("web.yml") && e.contains("basic_auth_users.carol"),
            "{e}"
        );
        // The config from before the error is still the one served.
        assert_eq!(h.current().config.users.keys().collect::<Vec<_>>(), ["bob"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
