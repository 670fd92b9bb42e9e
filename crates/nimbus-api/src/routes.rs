//! The route table: axum's `Router`, plus the list of paths it serves.
//!
//! axum cannot list a router's routes, and the role-matrix test (`tests/api/role_matrix.rs`) must try
//! every route of every API family, so that a route added without an access rule fails it. Every router
//! of this crate is built with [`Routes`], whose `route` is axum's and also records the path.

use axum::routing::MethodRouter;
use axum::Router;

use crate::AppState;

/// A router under construction, with the paths it serves.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    paths: Vec<String>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    /// axum's [`Router::route`], recorded.
    pub fn route(mut self, path: &str, method_router: MethodRouter<AppState>) -> Routes {
        self.paths.push(path.to_string());
        self.router = self.router.route(path, method_router);
        self
    }

    /// Serves `other`'s routes too.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.paths.extend(other.paths);
        self.router = self.router.merge(other.router);
        self
    }

    /// Applies what does not add routes (layers, method fallbacks) to the router built so far.
    pub fn wrap(mut self, f: impl FnOnce(Router<AppState>) -> Router<AppState>) -> Routes {
        self.router = f(self.router);
        self
    }

    /// Every path served, as written in its route (`/v1/instances/{id}`).
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
