//! rustls client configurations for each `sslmode`, and the TLS connector that keeps
//! the [`Sniff`] wrapper on the plaintext side.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Parsed, RootCerts, SslMode};
use crate::error::PgError;
use crate::socket::RawStream;
use crate::wire::{Mode, Sniff, WireState};

type Raw = Sniff<RawStream>;
type RustlsConnector = <MakeRustlsConnect as MakeTlsConnect<Raw>>::TlsConnect;
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Raw>>::Stream;

/// Builds the rustls configuration for the parsed `sslmode`, or `None` for `disable`.
/// Root certificates are read here, once, so a bad `sslrootcert` fails at startup.
pub(crate) fn client_config(parsed: &Parsed) -> Result<Option<MakeRustlsConnect>, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::TlsConfig(e.to_string()))?;
    let verify_chain = match parsed.ssl_mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer => false,
        // libpq: with an explicit root certificate, `require` verifies the chain.
        SslMode::Require => parsed.explicit_root,
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
        let roots = Arc::new(root_store(&parsed.root_certs)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| PgError::TlsConfig(e.to_string()))?;
        if parsed.ssl_mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly { inner: webpki })
        }
    } else {
        Arc::new(EncryptOnly {
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn root_store(source: &RootCerts) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match source {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    PgError::TlsConfig(format!("cannot read sslrootcert {}: {e}", path.display()))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    PgError::TlsConfig(format!(
                        "invalid PEM in sslrootcert {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(PgError::TlsConfig(format!(
                    "sslrootcert {} contains no usable certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(PgError::TlsConfig(
                    "no system root certificate found; set sslrootcert=/path/to/root.crt".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root, the name may differ.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the chain before the name: a name error means the chain
            // itself was valid.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `sslmode=prefer|require`: encrypted, certificate not checked (libpq's meaning). The
/// handshake signatures are still verified, so the peer holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The [`TlsConnect`] handed to tokio-postgres: rustls, with the plaintext side of the
/// TLS stream wrapped in [`Sniff`] so the transaction status stays visible.
pub(crate) struct PgTlsConnect {
    pub(crate) inner: RustlsConnector,
    pub(crate) state: Arc<WireState>,
}

/// How [`Sniff`] must read the raw socket: framed from the first byte without TLS,
/// after the one-byte `SSLRequest` answer when TLS is negotiated, not at all with
/// direct TLS (`sslnegotiation=direct`), whose plaintext the TLS wrapper sees.
pub(crate) fn sniff_mode_for_raw(ssl: SslMode, direct: bool) -> Mode {
    match ssl {
        SslMode::Disable => Mode::Framed,
        _ if direct => Mode::Off,
        _ => Mode::SslAnswer,
    }
}

impl TlsConnect<Raw> for PgTlsConnect {
    type Stream = Sniff<RustlsStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, Self::Error>> + Send>>;

    fn connect(self, stream: Raw) -> Self::Future {
        Box::pin(async move {
            let state = self.state;
            let tls = self.inner.connect(stream).await?;
            Ok(Sniff::new(tls, state, Mode::Framed))
        })
    }
}

/// Makes the per-host connector.
pub(crate) fn connector(
    make: &MakeRustlsConnect,
    hostname: &str,
    state: Arc<WireState>,
) -> Result<PgTlsConnect, PgError> {
    let mut make = make.clone();
    let inner = <MakeRustlsConnect as MakeTlsConnect<Raw>>::make_tls_connect(&mut make, hostname)
        .map_err(|e| {
        PgError::TlsConfig(format!("invalid TLS server name `{hostname}`: {e}"))
    })?;
    Ok(PgTlsConnect { inner, state })
}
