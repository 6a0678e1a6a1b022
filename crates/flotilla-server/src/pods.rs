//! The pod service: `logs` and `exec` for a pod's containers. The server that receives the
//! request finds the pod's node; if that node's agent has its session here, the server opens a
//! stream on the agent's QUIC connection (agents listen on no port), otherwise it forwards the
//! request once to the server named in the node's Lease (`flotilla.io/agent-server`).

use std::pin::Pin;
use std::sync::Arc;

use flotilla_api::pb::agent::{
    server_request, server_stream_frame, ContainerExecRequest, ContainerLogsRequest, ServerRequest,
    ServerStreamFrame,
};
use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::pod_service_client::PodServiceClient;
use flotilla_api::pb::api::pod_service_server::PodService;
use flotilla_api::pb::api::{ExecRequest, GetRequest, LogsRequest, ObjectKey, OutputChunk};
use flotilla_api::{ApiError, ErrorCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::ObjectApi;
use crate::dispatcher::AGENT_SERVER_ANNOTATION;
use crate::identity::NODE_LEASE_NAMESPACE;
use crate::node::Node;
use crate::FORWARDED_HEADER;

/// Output chunks buffered per stream before the agent is slowed down.
const STREAM_QUEUE: usize = 64;

pub struct PodApi {
    node: Arc<Node>,
    api: Arc<ObjectApi>,
}

type OutputStream = Pin<Box<dyn futures::Stream<Item = Result<OutputChunk, Status>> + Send>>;

/// What to ask the agent, once the pod is known.
enum Ask {
    Logs(LogsRequest),
    Exec(ExecRequest),
}

impl PodApi {
    pub fn new(node: Arc<Node>, api: Arc<ObjectApi>) -> Self {
        PodApi { node, api }
    }

    /// The pod's uid, node and the container the request means.
    async fn locate(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
    ) -> Result<(String, String, String), ApiError> {
        let ns = if ns.is_empty() { "default" } else { ns };
        let o = self
            .api
            .get(Request::new(GetRequest {
                key: Some(ObjectKey {
                    kind: "Pod".into(),
                    namespace: ns.into(),
                    name: pod.into(),
                }),
                stale: false,
            }))
            .await
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner()
            .object
            .ok_or_else(|| ApiError::not_found(format!("pod {ns}/{pod}")))?;
        let Some(Body::Pod(p)) = &o.body else {
            return Err(ApiError::internal("stored pod has no pod body"));
        };
        let spec = p.spec.clone().unwrap_or_default();
        if spec.node_name.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("pod {ns}/{pod} is not on a node yet (spec.nodeName is empty)"),
            ));
        }
        let names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        let container = if container.is_empty() {
            match names.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "container",
                        format!(
                            "a container name must be specified for pod {pod}, choose one of: [{}]",
                            names.join(" ")
                        ),
                    ))
                }
            }
        } else if names.iter().any(|n| n == container) {
            container.to_string()
        } else {
            return Err(ApiError::invalid(
                "container",
                format!(
                    "container {container} is not valid for pod {pod}; it has [{}]",
                    names.join(" ")
                ),
            ));
        };
        Ok((o.meta().uid.clone(), spec.node_name, container))
    }

    async fn relay(&self, ask: Ask, forwarded: bool) -> Result<OutputStream, ApiError> {
        let (ns, pod, container) = match &ask {
            Ask::Logs(r) => (r.namespace.clone(), r.pod.clone(), r.container.clone()),
            Ask::Exec(r) => (r.namespace.clone(), r.pod.clone(), r.container.clone()),
        };
        let (uid, node_name, container) = self.locate(&ns, &pod, &container).await?;
        let conn = self
            .node
            .agents
            .lock()
            .ok()
            .and_then(|a| a.get(&node_name).map(|(_, c)| c.clone()));
        if let Some(conn) = conn {
            let req = match &ask {
                Ask::Logs(r) => server_request::Kind::Logs(ContainerLogsRequest {
                    pod_uid: uid,
                    container,
                    follow: r.follow,
                    tail_lines: r.tail_lines,
                    previous: r.previous,
                }),
                Ask::Exec(r) => server_request::Kind::Exec(ContainerExecRequest {
                    pod_uid: uid,
                    container,
                    command: r.command.clone(),
                }),
            };
            return self.to_agent(&node_name, conn, req).await;
        }
        if forwarded {
            return Err(ApiError::unavailable(format!(
                "node {node_name}'s agent has no session with this server any more; try again"
            )));
        }
        // The server the agent is connected to, from the node's Lease.
        let lease = self
            .node
            .reader
            .get(&ObjectKey {
                kind: "Lease".into(),
                namespace: NODE_LEASE_NAMESPACE.into(),
                name: node_name.clone(),
            })
            .map_err(ApiError::internal)?
            .0;
        let target = lease
            .and_then(|l| l.meta().annotations.get(AGENT_SERVER_ANNOTATION).cloned())
            .filter(|a| a != &self.node.api_addr)
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "node {node_name} has no agent session with any server (is its agent running?)"
                ))
            })?;
        let ch = self.node.channel(&target)?;
        let mut client = PodServiceClient::new(ch);
        let stream = match ask {
            Ask::Logs(r) => client.logs(mark(Request::new(r))).await,
            Ask::Exec(r) => client.exec(mark(Request::new(r))).await,
        }
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
        Ok(Box::pin(stream))
    }

    async fn to_agent(
        &self,
        node_name: &str,
        conn: quinn::Connection,
        req: server_request::Kind,
    ) -> Result<OutputStream, ApiError> {
        let unavailable = |e: String| ApiError::unavailable(format!("node {node_name}: {e}"));
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        flotilla_quic::write_frame(&mut send, &ServerRequest { kind: Some(req) })
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = send.finish();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let node = node_name.to_string();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = tx.closed() => {
                        let _ = recv.stop(0u32.into());
                        return;
                    }
                    f = flotilla_quic::read_frame::<ServerStreamFrame>(&mut recv) => f,
                };
                let item = match frame {
                    Ok(None) => return,
                    Ok(Some(ServerStreamFrame {
                        kind: Some(server_stream_frame::Kind::Chunk(c)),
                    })) => Ok(c),
                    Ok(Some(ServerStreamFrame {
                        kind: Some(server_stream_frame::Kind::Error(e)),
                    })) => Err(ApiError::new(ErrorCode::InvalidArgument, e.message).to_status()),
                    Ok(Some(_)) => return,
                    Err(e) => Err(ApiError::unavailable(format!("node {node}: {e}")).to_status()),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

fn mark<T>(mut r: Request<T>) -> Request<T> {
    r.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    r
}

fn forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

#[tonic::async_trait]
impl PodService for PodApi {
    type LogsStream = OutputStream;
    type ExecStream = OutputStream;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let f = forwarded(&request);
        Ok(Response::new(
            self.relay(Ask::Logs(request.into_inner()), f).await?,
        ))
    }

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let f = forwarded(&request);
        let r = request.into_inner();
        if r.command.is_empty() {
            return Err(ApiError::invalid("command", "exec needs a command").into());
        }
        Ok(Response::new(self.relay(Ask::Exec(r), f).await?))
    }
}
