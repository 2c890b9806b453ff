//! A real rsyslog receiver for the SIEM tests: `rsyslogd` started in a network namespace
//! (so the agent there reaches it on loopback), listening for RFC 5424 over TCP (octet
//! counting) or TLS, writing each message as `APP|MSGID|SEVERITY|HOSTNAME|MSG` lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::topology::Netns;

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate, made
/// with the openssl command line.
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    pub fn generate(dir: &Path) -> Self {
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=zonewall test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, subject) in [
            ("server", "/CN=localhost"),
            ("client", "/CN=zonewall-agent"),
        ] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Self {
            dir: dir.to_owned(),
        }
    }
}

pub struct Rsyslog {
    netns: String,
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    starts: usize,
}

impl Rsyslog {
    /// Starts rsyslogd in `netns` on 127.0.0.1:`port`; with `tls`, the listener requires
    /// TLS and a client certificate signed by the test CA.
    pub fn start(netns: &Netns, port: u16, tls: Option<&Certificates>) -> Self {
        let dir = tempfile::tempdir().expect("rsyslog folder");
        let work = dir.path().display().to_string();
        let driver = match tls {
            None => String::new(),
            Some(certificates) => format!(
                "global(DefaultNetstreamDriver=\"ossl\" DefaultNetstreamDriverCAFile=\"{}\" \
                 DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n",
                certificates.ca().display(),
                certificates.dir.join("server.pem").display(),
                certificates.dir.join("server.key").display()
            ),
        };
        let module = match tls {
            None => "module(load=\"imtcp\" maxSessions=\"64\")".to_owned(),
            Some(_) => "module(load=\"imtcp\" maxSessions=\"64\" StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"x509/certvalid\")".to_owned(),
        };
        let config = format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\")\n{driver}{module}\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"line\" type=\"string\" string=\"%app-name%|%msgid%|%syslogseverity%|%hostname%|%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{work}/messages.log\" template=\"line\" flushOnTXEnd=\"on\" asyncWriting=\"off\")\n"
        );
        std::fs::write(dir.path().join("rsyslog.conf"), config).unwrap();
        let mut rsyslog = Self {
            netns: netns.name().to_owned(),
            dir,
            port,
            child: None,
            starts: 0,
        };
        rsyslog.spawn();
        rsyslog
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("rsyslogd-{}.log", self.starts)),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "rsyslogd", "-n", "-f"])
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rsyslogd (install the rsyslog and rsyslog-openssl packages)");
        self.child = Some(child);
        // Ready when the port accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{}", self.port),
                ])
                .output()
                .map(|output| !output.stdout.is_empty())
                .unwrap_or(false);
            if listening {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {}:\n{}",
                self.port,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn daemon_log(&self) -> String {
        (1..=self.starts)
            .map(|start| {
                std::fs::read_to_string(self.dir.path().join(format!("rsyslogd-{start}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Kills rsyslogd with SIGKILL (nothing it held is flushed).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("rsyslogd.pid"));
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every received message as (app, msgid, severity, hostname, body).
    pub fn messages(&self) -> Vec<(String, String, u8, String, String)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("messages.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(5, '|');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next()?.parse().ok()?,
                    parts.next()?.to_owned(),
                    parts.next()?.trim_start().to_owned(),
                ))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Validates OCSF JSON lines against the published OCSF schema (the `ocsf-json-schema`
/// Python package, which ships the schema releases); returns the validator's report.
pub fn validate_ocsf(lines: &[String]) -> Result<usize, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ocsf/validate.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("python3: {error}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|error| error.to_string())?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(lines.len())
    } else {
        Err(report)
    }
}
