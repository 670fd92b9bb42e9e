//! Websockets to a Nimbus server over plain TCP (`ws://`) or TLS (`wss://`): the CLI's interactive console
//! and an agent carrying a console back to its server. The TLS is the rustls (ring) the server speaks,
//! trusting what the HTTP clients trust: a private CA given with `--ca-file`, and no public roots (a Nimbus
//! server's certificate comes from its operator). tokio-tungstenite's own TLS features would bring a second
//! TLS setup with roots of its own; it is handed the ready stream instead.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::WebSocketStream;

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Socket = WebSocketStream<Box<dyn Io>>;

/// The TLS client configuration trusting the PEM certificates of `ca_file` (none: nothing is trusted,
/// and every `wss://` connection fails to verify, saying so).
pub fn tls_config(ca_file: Option<&Path>) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let certificates =
            CertificateDer::pem_file_iter(path).map_err(|e| invalid(format!("--ca-file {}: {e}", path.display())))?;
        for certificate in certificates {
            let certificate = certificate.map_err(|e| invalid(format!("--ca-file {}: {e}", path.display())))?;
            roots.add(certificate).map_err(|e| invalid(format!("--ca-file {}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the websocket `request` names (`ws://` or `wss://`), trusting `ca_file` for TLS.
pub async fn connect(request: Request, ca_file: Option<&Path>) -> Result<Socket, Error> {
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(Error::Url(tokio_tungstenite::tungstenite::error::UrlError::UnsupportedUrlScheme)),
    };
    let host = uri.host().ok_or(Error::Url(tokio_tungstenite::tungstenite::error::UrlError::NoHostName))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Io> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config(ca_file)?);
        Box::new(connector.connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}
