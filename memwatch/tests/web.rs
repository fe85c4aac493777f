//! The HTTP boundary with real clients: TLS, mTLS and basic auth from an
//! exporter-toolkit web config (curl against certificates openssl makes here), the
//! header-read timeout and the connection limit (raw sockets that send half a
//! request), scrapes in flight beyond `max_requests` (503) and one render shared by
//! concurrent scrapes (a FIFO in a `--path.procfs` fixture holds the render), config
//! errors that exit 2. No root needed: every agent runs with `collectors.bpf = false`.

mod common;

use std::{
    ffi::CString,
    io::{Read, Write},
    net::TcpStream,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{eventually, Agent, Metrics};

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "memwatch-test-web-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    fn write(&self, f: &str, text: &str) -> PathBuf {
        let p = self.path(f);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn s(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (ca.pem), a server certificate for 127.0.0.1 (server.pem, server.key), a
/// client certificate from the CA (client.pem, client.key) and one from nobody
/// (rogue.pem, rogue.key), made with openssl.
fn make_certs(dir: &TempDir) {
    dir.write(
        "ca.cnf",
        "[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\n\
         basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    );
    dir.write(
        "server.ext",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    );
    dir.write(
        "client.ext",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\nsubjectAltName=DNS:scraper.test\n",
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (name, subject) in [("ca", "/CN=memwatch test CA"), ("rogue", "/CN=rogue")] {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let mut a = vec!["req", "-x509", "-config", "ca.cnf", "-extensions", "v3_ca"];
        a.extend(ec);
        a.extend([
            "-keyout", &key, "-out", &pem, "-days", "2", "-subj", subject,
        ]);
        openssl(&dir.0, &a);
    }
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=scraper")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut a = vec!["req", "-new", "-config", "ca.cnf"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(&dir.0, &a);
        openssl(
            &dir.0,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "7",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// The agent's config: no eBPF (no root needed), only meminfo from `procfs`, debug logs.
fn agent_toml(dir: &TempDir, web: &str) -> PathBuf {
    dir.write(
        "memwatch.toml",
        &format!(
            "[log]\nlevel = \"debug\"\n[web]\n{web}\n[collectors]\nmeminfo = true\n\
             vmstat = false\nzoneinfo = false\npressure = false\nknobs = false\n\
             processes = false\nbpf = false\n\
             # A render held on a FIFO waits for the test, however slow the machine.\n\
             timeout_seconds = 600.0\n"
        ),
    )
}

/// True when every tool is on PATH; otherwise prints why `test` is skipped (the VM
/// guests have neither curl nor openssl).
fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    if !missing.is_empty() {
        println!(
            "SKIP {test}: {} not installed (Debian's curl and openssl packages; the QEMU \
             test VMs have neither)",
            missing.join(" and ")
        );
    }
    missing.is_empty()
}

/// One curl run's outcome.
#[derive(Debug)]
struct Curl {
    /// curl's exit code (0: a response came back, whatever its status).
    exit: i32,
    status: u16,
    headers: String,
    body: String,
    stderr: String,
}

fn curl(dir: &TempDir, args: &[&str]) -> Curl {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (h, b) = (dir.path(&format!("h{n}")), dir.path(&format!("b{n}")));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-o"])
        .arg(&b)
        .arg("-D")
        .arg(&h)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let c = Curl {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: std::fs::read_to_string(&b).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let _ = (std::fs::remove_file(h), std::fs::remove_file(b));
    c
}

/// Starts the agent with `args` and waits until `ready` (a client's view of /healthz)
/// says it serves; fails with the log if it exits first.
fn start(args: &[&str], mut ready: impl FnMut(u16) -> bool) -> Agent {
    let mut agent = Agent::start_with(&[], args, &[], false);
    let port = agent.port;
    let up = eventually(300, || {
        if let Some(s) = agent.exited() {
            panic!("memwatch exited early ({s}):\n{}", agent.log_text());
        }
        ready(port).then_some(())
    });
    assert!(
        up.is_some(),
        "memwatch did not come up:\n{}",
        agent.log_text()
    );
    agent
}

/// GET over a new plain connection with `Connection: close`: (status, body). The
/// server closes the connection once it answers, so its slot is free before the
/// next connection is accepted.
fn get_close(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn plain_ready(port: u16) -> bool {
    get_close(port, "/healthz").is_some_and(|(s, b)| s == 200 && b == "ok\n")
}

fn mem_total_bytes() -> f64 {
    common::read_meminfo()["MemTotal"] as f64
}

/// A scrape's body, checked: it carries this host's MemTotal.
fn check_scrape(body: &str) -> Metrics {
    let m = Metrics::parse(body);
    assert_eq!(
        m.get("memwatch_meminfo_mem_total_bytes", &[]),
        Some(mem_total_bytes()),
        "{body}"
    );
    m
}

fn rejected(m: &Metrics, reason: &str) -> f64 {
    m.get("memwatch_http_rejected_total", &[("reason", reason)])
        .unwrap_or_else(|| panic!("no memwatch_http_rejected_total{{reason={reason:?}}}"))
}

fn https(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

// Fails on the old code: there was no --web.config.file (clap exits 2 on the flag).
#[test]
fn tls_serves_with_a_ca_and_refuses_plain_http() {
    if !tools_or_skip(
        "tls_serves_with_a_ca_and_refuses_plain_http",
        &["curl", "openssl"],
    ) {
        return;
    }
    let dir = TempDir::new("tls");
    make_certs(&dir);
    // Relative names: relative to the web config file's folder.
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    );
    let cfg = agent_toml(&dir, "");
    let ca = dir.s("ca.pem");
    let agent = start(
        &[
            &format!("--config={}", cfg.display()),
            &format!("--web.config.file={}", web.display()),
        ],
        |port| curl(&dir, &["--cacert", &ca, &https(port, "/healthz")]).status == 200,
    );
    let port = agent.port;
    // Plain HTTP against the TLS port: no HTTP answer.
    let plain = curl(&dir, &[&format!("http://127.0.0.1:{port}/healthz")]);
    assert_ne!(plain.exit, 0, "plain HTTP got an answer: {plain:?}");
    assert_eq!(plain.status, 0, "{plain:?}");
    // Without the CA, curl does not trust the server.
    let untrusted = curl(&dir, &[&https(port, "/metrics")]);
    assert_eq!(untrusted.exit, 60, "{}", untrusted.stderr);
    let ok = curl(&dir, &["--cacert", &ca, &https(port, "/metrics")]);
    assert_eq!((ok.exit, ok.status), (0, 200), "{ok:?}");
    let m = check_scrape(&ok.body);
    // The two failed handshakes, counted.
    assert_eq!(rejected(&m, "tls"), 2.0, "{}", agent.log_text());
    assert!(
        agent.log_text().contains("on https://"),
        "{}",
        agent.log_text()
    );
}

// Fails on the old code: no TLS at all.
#[test]
fn mtls_require_and_verify_needs_a_client_cert_from_the_ca() {
    if !tools_or_skip(
        "mtls_require_and_verify_needs_a_client_cert_from_the_ca",
        &["curl", "openssl"],
    ) {
        return;
    }
    let dir = TempDir::new("mtls");
    make_certs(&dir);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    );
    let cfg = agent_toml(&dir, "");
    let (ca, cert, key) = (dir.s("ca.pem"), dir.s("client.pem"), dir.s("client.key"));
    let (rogue, rogue_key) = (dir.s("rogue.pem"), dir.s("rogue.key"));
    let with_cert = |port| {
        curl(
            &dir,
            &[
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                &https(port, "/metrics"),
            ],
        )
    };
    let agent = start(
        &[
            &format!("--config={}", cfg.display()),
            &format!("--web.config.file={}", web.display()),
        ],
        |port| with_cert(port).status == 200,
    );
    let port = agent.port;
    let none = curl(&dir, &["--cacert", &ca, &https(port, "/healthz")]);
    assert_ne!(none.exit, 0, "no client certificate, yet: {none:?}");
    assert_eq!(none.status, 0, "{none:?}");
    let wrong = curl(
        &dir,
        &[
            "--cacert",
            &ca,
            "--cert",
            &rogue,
            "--key",
            &rogue_key,
            &https(port, "/healthz"),
        ],
    );
    assert_ne!(
        wrong.exit, 0,
        "a certificate from another CA, yet: {wrong:?}"
    );
    let ok = with_cert(port);
    assert_eq!((ok.exit, ok.status), (0, 200), "{ok:?}");
    let m = check_scrape(&ok.body);
    assert_eq!(rejected(&m, "tls"), 2.0, "{}", agent.log_text());
}

// Fails on the old code: no TLS at all.
#[test]
fn tls13_minimum_refuses_a_tls12_client() {
    if !tools_or_skip("tls13_minimum_refuses_a_tls12_client", &["curl", "openssl"]) {
        return;
    }
    let dir = TempDir::new("tls13");
    make_certs(&dir);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         min_version: TLS13\n",
    );
    let cfg = agent_toml(&dir, "");
    let ca = dir.s("ca.pem");
    let agent = start(
        &[
            &format!("--config={}", cfg.display()),
            &format!("--web.config.file={}", web.display()),
        ],
        |port| {
            curl(
                &dir,
                &["--cacert", &ca, "--tlsv1.3", &https(port, "/healthz")],
            )
            .status
                == 200
        },
    );
    let old = curl(
        &dir,
        &[
            "--cacert",
            &ca,
            "--tls-max",
            "1.2",
            &https(agent.port, "/healthz"),
        ],
    );
    assert_ne!(old.exit, 0, "a TLS 1.2 client got through: {old:?}");
    assert_eq!(old.status, 0, "{old:?}");
    let ok = curl(
        &dir,
        &["--cacert", &ca, "--tlsv1.3", &https(agent.port, "/metrics")],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(rejected(&check_scrape(&ok.body), "tls"), 1.0);
}

// Fails on the old code: no auth, no headers (and no --web.config.file).
#[test]
fn basic_auth_and_fixed_headers() {
    if !tools_or_skip("basic_auth_and_fixed_headers", &["curl"]) {
        return;
    }
    let dir = TempDir::new("auth");
    // Cost 4 (the least): the debug build's bcrypt is slow.
    let hash = bcrypt::hash("s3cret:pw", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!(
            "basic_auth_users:\n  alice: {hash}\nhttp_server_config:\n  headers:\n    \
             X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
        ),
    );
    let cfg = agent_toml(
        &dir,
        &format!("config_file = {:?}", web.display().to_string()),
    );
    let agent = start(&[&format!("--config={}", cfg.display())], plain_ready);
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    for (who, user) in [
        ("no credentials", None),
        ("a wrong password", Some("alice:s3cret")),
        ("an unknown user", Some("bob:s3cret:pw")),
    ] {
        let mut args = vec![url.as_str()];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        let r = curl(&dir, &args);
        assert_eq!(r.status, 401, "{who}: {r:?}");
        let h = r.headers.to_ascii_lowercase();
        assert!(h.contains("www-authenticate: basic"), "{who}: {h}");
        assert!(h.contains("x-frame-options: deny"), "{who}: {h}");
        assert!(
            !r.body.contains("memwatch_"),
            "{who}: data without auth: {}",
            r.body
        );
    }
    // /healthz stays open (liveness probes carry no credentials) and shows no data.
    let health = curl(&dir, &[&format!("http://127.0.0.1:{}/healthz", agent.port)]);
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "ok\n"),
        "{health:?}"
    );
    // Everything else is behind auth.
    for path in ["/", "/api/episodes"] {
        let r = curl(&dir, &[&format!("http://127.0.0.1:{}{path}", agent.port)]);
        assert_eq!(r.status, 401, "{path}: {r:?}");
    }
    let ok = curl(&dir, &[&url, "-u", "alice:s3cret:pw"]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let h = ok.headers.to_ascii_lowercase();
    assert!(h.contains("x-frame-options: deny"), "{h}");
    assert!(h.contains("x-content-type-options: nosniff"), "{h}");
    let m = check_scrape(&ok.body);
    assert_eq!(rejected(&m, "auth"), 5.0);
}

// Fails on the old code: SIGHUP killed the daemon.
/// SIGHUP reads the web config file again: a new user set takes effect for new
/// connections, and a broken file keeps the running one.
#[test]
fn sighup_reloads_the_web_config_and_keeps_it_on_an_error() {
    if !tools_or_skip(
        "sighup_reloads_the_web_config_and_keeps_it_on_an_error",
        &["curl"],
    ) {
        return;
    }
    let dir = TempDir::new("reload");
    let users = |u: &str| {
        let hash = bcrypt::hash("pw", 4).unwrap();
        format!("basic_auth_users:\n  {u}: {hash}\n")
    };
    let web = dir.write("web.yml", &users("alice"));
    let cfg = agent_toml(
        &dir,
        &format!("config_file = {:?}", web.display().to_string()),
    );
    let agent = start(&[&format!("--config={}", cfg.display())], plain_ready);
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let status = |user: &str| curl(&dir, &[&url, "-u", user]).status;
    assert_eq!(status("alice:pw"), 200);
    assert_eq!(status("bob:pw"), 401);
    let hup = || {
        // SAFETY: signalling the agent we started, by its pid.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    };
    let logged = |what: &str, n: usize| {
        eventually(120, || (count(&agent.log_text(), what) >= n).then_some(()))
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{}", agent.log_text()));
    };
    std::fs::write(&web, users("bob")).unwrap();
    hup();
    logged("SIGHUP: web config: changed", 1);
    assert_eq!(status("bob:pw"), 200);
    assert_eq!(status("alice:pw"), 401);
    std::fs::write(&web, "basic_auth_users:\n  bob: not-a-bcrypt-hash\n").unwrap();
    hup();
    logged("keeping the running one", 1);
    assert_eq!(status("bob:pw"), 200);
    let mut agent = agent;
    assert!(agent.exited().is_none());
}

/// Runs memwatch to completion with `args`: (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(common::bin())
        .arg("run")
        .args(["--web.listen-address=127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memwatch");
    let status = eventually(120, || child.try_wait().unwrap());
    let Some(status) = status else {
        common::terminate(&mut child);
        panic!("memwatch {args:?} kept running instead of exiting");
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

// Fails on the old code: --web.config.file did not exist (exit 2, but from clap, with
// no word of the key).
#[test]
fn a_bad_web_config_file_exits_2_naming_the_file_and_the_key() {
    let dir = TempDir::new("bad");
    let cfg = agent_toml(&dir, "");
    for (i, (yaml, key)) in [
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cert_fil: c\n",
            "cert_fil",
        ),
        (
            "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
            "cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
            "client_auth_type",
        ),
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "basic_auth_users.alice",
        ),
        ("http_server_config:\n  headers:\n    Server: x\n", "Server"),
    ]
    .into_iter()
    .enumerate()
    {
        let web = dir.write(&format!("web{i}.yml"), yaml);
        let (code, err) = run_to_exit(&[
            &format!("--config={}", cfg.display()),
            &format!("--web.config.file={}", web.display()),
        ]);
        assert_eq!(code, Some(2), "{yaml:?}: {err}");
        assert!(err.contains(&web.display().to_string()), "{yaml:?}: {err}");
        assert!(err.contains(key), "{yaml:?}: {err} does not name {key}");
    }
    let (code, err) = run_to_exit(&[
        &format!("--config={}", cfg.display()),
        "--web.config.file=/nonexistent/web.yml",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/web.yml"), "{err}");
}

// Fails on the old code: `/` and `/api/episodes` panicked (exit 101), `/{x}` too.
#[test]
fn a_telemetry_path_that_collides_or_is_route_syntax_exits_2() {
    let dir = TempDir::new("paths");
    let cfg = agent_toml(&dir, "");
    for path in [
        "/",
        "/healthz",
        "/api/episodes",
        "/api/x",
        "/{x}",
        "/*rest",
        "/:id",
        "//m",
    ] {
        let (code, err) = run_to_exit(&[
            &format!("--config={}", cfg.display()),
            &format!("--web.telemetry-path={path}"),
        ]);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(err.contains("web.telemetry_path"), "{path}: {err}");
        assert!(!err.contains("panicked"), "{path}: {err}");
    }
}

/// Opens a connection that sends half a request and nothing more.
fn stalled(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s
}

/// Waits (up to 120 s) for the server to close `s` without answering.
fn closed_without_answer(s: &mut TcpStream) -> Result<(), String> {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        return match s.read(&mut buf) {
            Ok(0) => Ok(()),
            // A signal to this process (another test's child exiting) cut the wait short.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Ok(n) => Err(format!(
                "answered: {:?}",
                String::from_utf8_lossy(buf.get(..n).unwrap_or_default())
            )),
            Err(e) => Err(format!("still open after 120 s ({e})")),
        };
    }
}

/// Whether `s` is still open with nothing to read (the server neither answered nor
/// closed it).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let open = matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

// Fails on the old code: half requests stayed open forever (and the [web] keys did not
// exist).
#[test]
fn stalled_half_requests_are_closed_after_the_header_timeout() {
    let dir = TempDir::new("stall");
    let cfg = agent_toml(&dir, "header_read_timeout = \"1s\"\nmax_connections = 64");
    let agent = start(&[&format!("--config={}", cfg.display())], plain_ready);
    const N: usize = 40;
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = (0..N).map(|_| stalled(agent.port)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        if let Err(e) = closed_without_answer(s) {
            panic!("stalled connection {i}: {e}\n{}", agent.log_text());
        }
    }
    println!(
        "{N} stalled connections closed {:.2?} after opening",
        start.elapsed()
    );
    let (status, body) = get_close(agent.port, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    let m = check_scrape(&body);
    assert_eq!(rejected(&m, "timeout"), N as f64);
    assert_eq!(rejected(&m, "connections"), 0.0);
}

// Fails on the old code: no limit, so nothing was evicted (and the keys did not exist).
#[test]
fn a_scrape_gets_through_while_stalled_connections_hold_every_slot() {
    if !tools_or_skip(
        "a_scrape_gets_through_while_stalled_connections_hold_every_slot",
        &["curl"],
    ) {
        return;
    }
    let dir = TempDir::new("slots");
    // Nothing times out during the test: only eviction frees a slot.
    let cfg = agent_toml(&dir, "header_read_timeout = \"300s\"\nmax_connections = 4");
    let agent = start(&[&format!("--config={}", cfg.display())], plain_ready);
    // Eight stalled connections for four slots: the server keeps the last four it
    // accepted and closes the first four (the longest waiting).
    let mut conns: Vec<TcpStream> = (0..8).map(|_| stalled(agent.port)).collect();
    for (i, s) in conns.iter_mut().take(4).enumerate() {
        if let Err(e) = closed_without_answer(s) {
            panic!("stalled connection {i} should have been evicted: {e}");
        }
    }
    // A real scrape takes the slot of the longest-waiting stalled connection (the
    // fifth) and is answered at once, with 300 s of header timeout left to the rest.
    let r = curl(
        &dir,
        &[
            "-H",
            "Connection: close",
            &format!("http://127.0.0.1:{}/metrics", agent.port),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let m = check_scrape(&r.body);
    assert_eq!(rejected(&m, "evicted"), 5.0);
    assert_eq!(rejected(&m, "connections"), 0.0);
    assert_eq!(rejected(&m, "timeout"), 0.0);
    // The three stalled ones left and the scrape itself.
    assert_eq!(m.get("memwatch_http_connections", &[]), Some(4.0));
    closed_without_answer(&mut conns[4]).expect("the fifth, evicted by the scrape");
    for (i, s) in conns.iter_mut().enumerate().skip(5) {
        assert!(still_open(s), "stalled connection {i} was closed");
    }
}

/// Makes a FIFO.
fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        p.display()
    );
}

/// The FIFO's write end once a reader (the render) has it open: O_NONBLOCK makes the
/// open fail with ENXIO until then.
fn writer_when_read(fifo: &Path, agent: &Agent) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt as _;
    eventually(120, || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .ok()
    })
    .unwrap_or_else(|| panic!("no render opened {}:\n{}", fifo.display(), agent.log_text()))
}

fn count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

// Fails on the old code: every scrape ran a render of its own, and there was no limit
// on scrapes in flight (no 503; and the keys did not exist).
#[test]
fn concurrent_scrapes_share_one_render_and_beyond_max_requests_get_503() {
    let dir = TempDir::new("renders");
    let procfs = dir.path("proc");
    std::fs::create_dir(&procfs).unwrap();
    let fifo = procfs.join("meminfo");
    mkfifo(&fifo);
    let cfg = agent_toml(&dir, "max_requests = 2");
    let agent = start(
        &[
            &format!("--config={}", cfg.display()),
            &format!("--path.procfs={}", procfs.display()),
        ],
        plain_ready,
    );
    let port = agent.port;
    let scrape = move || get_close(port, "/metrics");
    // The first scrape starts a render, which blocks reading the FIFO.
    let a = std::thread::spawn(scrape);
    let mut w = writer_when_read(&fifo, &agent);
    // The second joins it (the server says so in its log).
    let b = std::thread::spawn(scrape);
    let joined = "scrape joins the render in flight";
    eventually(120, || {
        (count(&agent.log_text(), joined) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the second scrape did not join:\n{}", agent.log_text()));
    // Two in flight: the third is turned away at once, and /healthz still answers.
    let (status, body) = get_close(port, "/metrics").expect("third scrape");
    assert_eq!(status, 503, "{body}");
    assert_eq!(get_close(port, "/healthz"), Some((200, "ok\n".into())));
    // The render goes on: both scrapes get its result.
    w.write_all(b"MemTotal:       1234 kB\n").unwrap();
    drop(w);
    for (name, t) in [("first", a), ("second", b)] {
        let (status, body) = t.join().unwrap().expect(name);
        assert_eq!(status, 200, "{name}: {body}");
        let m = Metrics::parse(&body);
        assert_eq!(
            m.get("memwatch_meminfo_mem_total_bytes", &[]),
            Some(1234.0 * 1024.0)
        );
    }
    // A later scrape runs a render of its own (the FIFO is opened again).
    let d = std::thread::spawn(scrape);
    let mut w = writer_when_read(&fifo, &agent);
    w.write_all(b"MemTotal:       1 kB\n").unwrap();
    drop(w);
    let (status, body) = d.join().unwrap().expect("fourth scrape");
    assert_eq!(status, 200, "{body}");
    let m = Metrics::parse(&body);
    assert_eq!(m.get("memwatch_meminfo_mem_total_bytes", &[]), Some(1024.0));
    // The collectors of the shared render ran while the third scrape was being turned
    // away; this render's counted it.
    assert_eq!(rejected(&m, "renders"), 1.0);
    let log = agent.log_text();
    assert_eq!(count(&log, "scrape starts a render"), 2, "{log}");
    assert_eq!(count(&log, joined), 1, "{log}");
}

// Fails on the old code: a half-sent request held the graceful shutdown up for good
// (it had not exited 120 s after SIGTERM).
#[test]
fn sigterm_closes_open_connections_and_exits() {
    let dir = TempDir::new("term");
    let cfg = agent_toml(&dir, "");
    let mut agent = start(&[&format!("--config={}", cfg.display())], plain_ready);
    let mut half = stalled(agent.port);
    // A kept-alive connection, idle after one answer.
    let mut idle = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf
        .get(..n)
        .unwrap_or_default()
        .starts_with(b"HTTP/1.1 200"));
    let start = Instant::now();
    // SAFETY: signalling the agent we started, by its pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let status = eventually(120, || agent.exited()).expect("memwatch did not exit");
    println!("exited {:.2?} after SIGTERM ({status})", start.elapsed());
    assert!(status.success(), "{status}: {}", agent.log_text());
    closed_without_answer(&mut half).unwrap();
    closed_without_answer(&mut idle).unwrap();
}
