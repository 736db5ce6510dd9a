//! Throwaway certificates for TLS tests: a CA made for the run, and
//! server certificates it signs (valid, expired, or for another host),
//! written as PEM files in a temporary directory.

use chat_server::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority of its own, and the directory of its files.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA's certificate in PEM: what clients are told to trust.
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// What a server certificate is valid for.
pub enum Validity {
    /// From yesterday for a year.
    Current,
    /// Through 2021 only.
    Expired,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        Self {
            cert_pem: cert.pem(),
            dir,
            cert,
            key,
        }
    }

    /// The CA certificate's file (for `--ca-cert`).
    pub fn cert_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write the CA certificate");
        path
    }

    /// A server certificate for `hosts` signed by this CA, as PEM
    /// (certificate, key).
    pub fn issue_pem(&self, hosts: &[&str], validity: Validity) -> (String, String) {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(hosts).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "chat test server");
        match validity {
            Validity::Current => {
                let now = std::time::SystemTime::now();
                params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
                params.not_after = (now + std::time::Duration::from_secs(365 * 86_400)).into();
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        }
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// [`Self::issue_pem`] written as `<name>.crt` and `<name>.key`.
    pub fn issue(&self, name: &str, hosts: &[&str], validity: Validity) -> TlsFiles {
        let (cert, key) = self.issue_pem(hosts, validity);
        let files = TlsFiles {
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        write_files(&files, &cert, &key);
        files
    }
}

/// Replaces `files` with `cert` and `key`, each by a rename, as a renewal
/// tool does.
pub fn write_files(files: &TlsFiles, cert: &str, key: &str) {
    for (path, text) in [(&files.cert, cert), (&files.key, key)] {
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, text).expect("write a certificate file");
        std::fs::rename(&fresh, path).expect("replace a certificate file");
    }
}

/// A gRPC channel over TLS to `addr` trusting only `ca_pem`, checking
/// the certificate for `host`.
pub async fn channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    host: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name(host);
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(crate::WAIT)
        .connect()
        .await
}
