//! Tower middleware: [`AuthLayer`] authenticates the incoming requests of a
//! resource server with a [`Verifier`](crate::Verifier) (tonic, axum or
//! hyper), [`TokenLayer`] attaches the right token to a caller's outgoing
//! requests from a [`TokenSource`](crate::TokenSource).
//!
//! Both work on `http::Request`/`http::Response`, so the same layer serves
//! gRPC (tonic) and plain HTTP (axum, hyper); neither pulls in a web
//! framework.
//!
//! - [`routes`]: the route → [`Requirement`] table of the [`AuthLayer`].
//! - [`auth`]: [`AuthLayer`], the [`PeerCertificate`] and [`SubjectToken`]
//!   extensions, [`Refusal`] and its gRPC and RFC 6750 answers.
//! - [`attach`]: the [`TokenLayer`].

pub mod attach;
pub mod auth;
pub mod routes;

pub use attach::{TokenLayer, TokenService};
pub use auth::{AuthLayer, AuthService, PeerCertificate, Refusal, SubjectToken};
pub use routes::{Requirement, Routes};
