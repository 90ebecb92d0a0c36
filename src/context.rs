//! The one typed per-request context, created once, right after the request id: the recognised
//! route (the compiled document, the operation and its raw parameters), the connection, and what
//! has been decided so far. Later layers read it; none matches the route again.
//!
//! Like Pingora's per-request `CTX`, but carried as the request's one extension, since tower
//! services take only the request. What flows back up (the `Outcome`) stays a response extension.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request};
use tower::{Layer, Service};

use crate::contract::{Api, Operation};
use crate::headers::ConnInfo;
use crate::metrics::{Metrics, RouteSeries};
use crate::route::{Match, RouteError, Router, MAX_PARAMS};
use crate::session::SessionVerdict;

/// The compiled document and what is derived from it once per load: the router and the metric
/// series of its route labels.
pub struct Routes {
    api: Arc<Api>,
    router: Router,
    series: RouteSeries,
}

impl Routes {
    pub(crate) fn new(api: Arc<Api>, metrics: &Metrics) -> Result<Routes, RouteError> {
        let ops = api.operations();
        let router = Router::new(ops.iter().map(|op| (op.method(), op.template())))?;
        let series = metrics.route_series(ops.iter().map(|op| (op.label(), op.method())));
        Ok(Routes {
            api,
            router,
            series,
        })
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn recognise(&self, method: &Method, path: &str) -> Match {
        self.router.recognise(method, path)
    }

    pub(crate) fn series(&self) -> &RouteSeries {
        &self.series
    }
}

/// How far the contract (stages 1–5) has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractState {
    /// Not checked (yet): a request on an operation in this state is never forwarded.
    Unchecked,
    /// Stages 1–5 passed.
    Passed,
    /// Stage 5 failed and report mode forwards it anyway.
    Reported,
}

/// One request's context.
#[derive(Clone)]
pub struct RequestCtx {
    routes: Arc<Routes>,
    route: Match,
    /// The connection, from the listener (`None` only when a test calls the stack directly).
    pub conn: Option<ConnInfo>,
    contract: ContractState,
    session: Option<SessionVerdict>,
    /// The request's trace when tracing is on: the upstream CLIENT spans' parent.
    pub(crate) trace: Option<crate::otel::Trace>,
}

impl RequestCtx {
    /// Recognises the request's route: the only place a request is matched.
    pub(crate) fn new<B>(routes: Arc<Routes>, req: &Request<B>) -> RequestCtx {
        let route = routes.recognise(req.method(), req.uri().path());
        RequestCtx {
            routes,
            route,
            conn: req.extensions().get::<ConnInfo>().copied(),
            contract: ContractState::Unchecked,
            session: None,
            trace: None,
        }
    }

    /// A context for `method` and `path` under the built-in document, for unit tests.
    #[cfg(test)]
    pub(crate) fn builtin_for_test(method: &str, path: &str) -> RequestCtx {
        use crate::contract::CompileOptions;
        let api = Api::builtin(&CompileOptions::default()).expect("the built-in document");
        let metrics = Metrics::new(&[1.0]).expect("metrics");
        let routes = Routes::new(Arc::new(api), &metrics).expect("its routes");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("a request");
        RequestCtx::new(Arc::new(routes), &req)
    }

    pub fn route(&self) -> Match {
        self.route
    }

    /// A handle on the routes, for what outlives the request (the observer's pending record).
    pub fn routes_arc(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// The matched operation.
    pub fn operation(&self) -> Option<&Operation> {
        match self.route {
            Match::Operation { index, .. } => self.routes.api.operations().get(index),
            _ => None,
        }
    }

    /// The route's place in the metric series: 0 is `other`, operation `i` is `i + 1`.
    pub fn route_slot(&self) -> usize {
        match self.route {
            Match::Operation { index, .. } => index + 1,
            _ => 0,
        }
    }

    /// The `route` metric label.
    pub fn label(&self) -> &str {
        self.operation().map_or("other", Operation::label)
    }

    /// The raw path parameters in `path` (the request's path), in template order.
    pub fn params<'a>(&self, path: &'a str) -> ([&'a str; MAX_PARAMS], usize) {
        match self.route {
            Match::Operation { params, .. } => params.values(path),
            _ => ([""; MAX_PARAMS], 0),
        }
    }

    /// Whether stage 6 must run before this request may be forwarded.
    pub fn requires_session(&self) -> bool {
        self.operation().is_some_and(Operation::requires_session)
    }

    pub fn contract(&self) -> ContractState {
        self.contract
    }

    pub fn set_contract(&mut self, state: ContractState) {
        self.contract = state;
    }

    /// Only the session layer can make a `SessionVerdict`.
    pub fn set_session(&mut self, verdict: SessionVerdict) {
        self.session = Some(verdict);
    }

    /// The session layer's verdict, once it judged the request.
    pub(crate) fn session(&self) -> Option<&SessionVerdict> {
        self.session.as_ref()
    }

    /// The decision still missing before the request may reach the upstream, if any: an
    /// operation's request must have passed the contract (or be reported by report mode) and,
    /// where the operation requires it, carry a session verdict.
    pub fn undecided(&self) -> Option<&'static str> {
        let op = self.operation()?;
        if self.contract == ContractState::Unchecked {
            Some("contract")
        } else if op.requires_session() && self.session.is_none() {
            Some("session")
        } else {
            None
        }
    }
}

/// Creates the context of each request.
#[derive(Clone)]
pub struct ContextLayer {
    routes: Arc<Routes>,
}

impl ContextLayer {
    pub(crate) fn new(routes: Arc<Routes>) -> Self {
        ContextLayer { routes }
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    routes: Arc<Routes>,
}

impl<S, B> Service<Request<B>> for ContextService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = RequestCtx::new(self.routes.clone(), &req);
        req.extensions_mut().insert(ctx);
        self.inner.call(req)
    }
}
