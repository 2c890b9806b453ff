//! The test cluster's credentials, made fresh for every cluster with `openssl`: a CA, the
//! API server's serving certificate, the ServiceAccount token signing key, a static token
//! per [`User`], and a kubeconfig per user.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use rand::Rng as _;

use super::{APISERVER_IP, APISERVER_PORT, User, run};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("openssl").current_dir(dir).args(args))
        .with_context(|| format!("openssl {}", args.join(" ")))
        .map(drop)
}

/// A random bearer token.
fn token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("hex digit"))
        .collect()
}

/// Writes every credential of a cluster into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=zonewall-test-cluster-ca",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    // The names and addresses clients use: the cluster network, the `kubernetes` Service
    // (first address of the Service range), loopback.
    std::fs::write(
        dir.join("apiserver.ext"),
        format!(
            "subjectAltName=IP:{APISERVER_IP},IP:198.19.200.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "30",
            "-extfile",
            "apiserver.ext",
        ],
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;

    let mut tokens = String::new();
    for (uid, user) in User::ALL.iter().enumerate() {
        let secret = token();
        tokens.push_str(&format!(
            "{secret},{},uid-{uid},\"{}\"\n",
            user.name(),
            user.groups()
        ));
        write_kubeconfig(
            &dir.join(format!("{}.kubeconfig", user.file())),
            &dir.join("ca.crt"),
            user.name(),
            &secret,
        )?;
    }
    std::fs::write(dir.join("tokens.csv"), tokens)?;
    Ok(())
}

/// A kubeconfig for `user` with bearer token `token`, trusting the cluster's CA.
pub fn write_kubeconfig(path: &Path, ca: &Path, user: &str, token: &str) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "zonewall-test", "cluster": {
            "server": format!("https://{APISERVER_IP}:{APISERVER_PORT}"),
            "certificate-authority": ca,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "zonewall-test", "context": {"cluster": "zonewall-test", "user": user}}],
        "current-context": "zonewall-test",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}
