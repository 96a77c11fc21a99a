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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use crate::config::{Parsed, RootCerts, SslMode};
use crate::error::PgError;
use crate::socket::RawStream;
use crate::wire::{Mode, Sniff, WireState};

type Raw = Sniff<RawStream>;

/// The ALPN protocol name PostgreSQL 17 registered for its protocol.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Builds the rustls configuration for the parsed `sslmode`, or `None` for `disable`.
/// Root certificates are read here, once, so a bad `sslrootcert` fails at startup.
pub(crate) fn client_config(parsed: &Parsed) -> Result<Option<TlsConnector>, PgError> {
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
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // ALPN `postgresql`, as libpq 17 sends it: PostgreSQL 17 refuses a direct TLS
    // connection (`sslnegotiation=direct`) without it, and ignores it (like any
    // server that does not select a protocol) after an `SSLRequest`.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(TlsConnector::from(Arc::new(config))))
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
    connector: TlsConnector,
    name: ServerName<'static>,
    state: Arc<WireState>,
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
    type Stream = Sniff<PgTlsStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, Self::Error>> + Send>>;

    fn connect(self, stream: Raw) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(Sniff::new(PgTlsStream(tls), self.state, Mode::Framed))
        })
    }
}

/// Makes the per-host connector.
pub(crate) fn connector(
    connector: &TlsConnector,
    hostname: &str,
    state: Arc<WireState>,
) -> Result<PgTlsConnect, PgError> {
    let name = ServerName::try_from(hostname.to_owned())
        .map_err(|e| PgError::TlsConfig(format!("invalid TLS server name `{hostname}`: {e}")))?;
    Ok(PgTlsConnect {
        connector: connector.clone(),
        name,
        state,
    })
}

/// A rustls client stream that gives tokio-postgres the `tls-server-end-point`
/// channel binding (RFC 5929) for SCRAM-SHA-256-PLUS.
///
/// Computed here rather than taken from tokio-postgres-rustls 0.13, which parses the
/// whole certificate as a `TBSCertificate`, fails, and so silently never binds.
pub(crate) struct PgTlsStream(tokio_rustls::client::TlsStream<Raw>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point_hash(cert.as_ref()))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The hash of the server certificate with the digest of its signature algorithm
/// (MD5 and SHA-1 upgraded to SHA-256, RFC 5929 4.1); `None` when the algorithm names
/// no single digest (Ed25519, RSASSA-PSS), as libpq.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_oid(der)? {
        // md5/sha1/sha256 WithRSAEncryption, ecdsa-with-SHA1, ecdsa-with-SHA256
        [
            0x2a,
            0x86,
            0x48,
            0x86,
            0xf7,
            0x0d,
            0x01,
            0x01,
            0x04 | 0x05 | 0x0b,
        ]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => &ring::digest::SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &ring::digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, der).as_ref().to_vec())
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, .. }, .. }`:
/// the content bytes of the signature algorithm's OID.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = tlv(cert)?;
    let (tag, algorithm, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER tag-length-value: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tls_mode_offers_the_postgresql_alpn_protocol() {
        for url in [
            "postgres://u@h/d?sslmode=require",
            "postgres://u@h/d?sslmode=require&sslnegotiation=direct",
            "postgres://u@h/d?sslmode=prefer",
        ] {
            let parsed = crate::config::parse(url).expect("valid");
            let connector = client_config(&parsed).expect("config").expect("tls");
            assert_eq!(
                connector.config().alpn_protocols,
                vec![b"postgresql".to_vec()],
                "{url}"
            );
        }
    }

    #[test]
    fn end_point_hash_uses_the_certificate_signature_digest() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let der = cert.cert.der().to_vec();
        // rcgen signs with ECDSA P-256 / SHA-256 by default.
        assert_eq!(
            signature_oid(&der),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
        );
        let hash = end_point_hash(&der).expect("hash");
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
        );
        assert_eq!(end_point_hash(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(end_point_hash(&[]), None);
    }
}
