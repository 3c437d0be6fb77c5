pub fn routes() -> axum::Router<crate::server::http::HttpState> {
    axum::Router::new()
}
