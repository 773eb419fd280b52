//! Throw-away PKI for a test control plane: a CA, the API server's serving certificate, an
//! admin client certificate and the service-account signing key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// Paths and PEM contents of the generated material.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub ca_pem: String,
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Certificates(format!("{what}: {e}"))
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Signs a client certificate for `user` in `groups`, valid against the control plane's CA.
pub fn client_cert(
    ca: &CertifiedIssuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), Error> {
    let key = KeyPair::generate().map_err(cert_err("generating a client key"))?;
    let mut params = CertificateParams::default();
    let mut dn = name(user, None);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, ca)
        .map_err(cert_err("signing a client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates the material into `dir`.
pub fn generate(dir: &Path) -> Result<(Pki, CertifiedIssuer<'static, KeyPair>), Error> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("sinew-test-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca =
        CertifiedIssuer::self_signed(ca_params, ca_key).map_err(cert_err("self-signing the CA"))?;

    let serving_key = KeyPair::generate().map_err(cert_err("generating the serving key"))?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default.svc".to_string(),
    ])
    .map_err(cert_err("serving certificate names"))?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving.distinguished_name = name("kube-apiserver", None);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .map_err(cert_err("signing the serving certificate"))?;

    let (admin_cert_pem, admin_key_pem) =
        client_cert(&ca, "sinew-test-admin", &["system:masters"])?;
    let sa_key = KeyPair::generate().map_err(cert_err("generating the service-account key"))?;

    let write = |file: &str, contents: &str| -> Result<PathBuf, Error> {
        let path = dir.join(file);
        std::fs::write(&path, contents).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        Ok(path)
    };
    let ca_pem = ca.as_ref().pem();
    let pki = Pki {
        ca_cert: write("ca.crt", &ca_pem)?,
        ca_key: write("ca.key", &ca_key_pem)?,
        serving_cert: write("apiserver.crt", &serving_cert.pem())?,
        serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
        service_account_key: write("sa.key", &sa_key.serialize_pem())?,
        service_account_pub: write("sa.pub", &sa_key.public_key_pem())?,
        admin_cert: write("admin.crt", &admin_cert_pem)?,
        admin_key: write("admin.key", &admin_key_pem)?,
        ca_pem,
    };
    Ok((pki, ca))
}
