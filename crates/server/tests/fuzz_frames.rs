//! Property test over request and frame handling: arbitrary bytes, and
//! valid requests with bytes flipped, cut short or grown, sent as the body
//! of every RPC and as frames of a `Connect` stream. Every answer is a
//! clear status (never `INTERNAL` or `UNKNOWN`, which is what a panic or
//! an unhandled case turns into), and the server keeps serving everyone
//! else afterwards.

use bytes::{Buf, BufMut};
use chat_proto as pb;
use chat_test_support::{send_request, TestServer, WAIT};
use proptest::prelude::*;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

/// Bytes in, bytes out: what the client sends is exactly what the test
/// made, valid protobuf or not.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining()).to_vec();
        Ok(Some(bytes))
    }
}

const UNARY: &[&str] = &[
    "/chat.v1.UserService/Register",
    "/chat.v1.UserService/GetUser",
    "/chat.v1.UserService/RotateSecret",
    "/chat.v1.ChatService/SendMessage",
    "/chat.v1.ChatService/GetHistory",
    "/chat.v1.ChatService/ListConversations",
    "/chat.v1.ChatService/MarkRead",
    "/chat.v1.ChatService/CreateGroup",
    "/chat.v1.ChatService/AddMembers",
    "/chat.v1.ChatService/RemoveMember",
    "/chat.v1.ChatService/LeaveGroup",
    "/chat.v1.ChatService/GetGroup",
    "/chat.v1.ChatService/EditMessage",
    "/chat.v1.ChatService/DeleteMessage",
];

/// Valid encodings to mutate: they get past the first bytes, so the
/// mutations reach field decoding and the handlers.
fn seeds() -> Vec<Vec<u8>> {
    let send = send_request("bob", "hello", "k1");
    let frame = pb::ClientFrame {
        frame: Some(pb::client_frame::Frame::Send(send.clone())),
    };
    vec![
        send.encode_to_vec(),
        frame.encode_to_vec(),
        pb::GetHistoryRequest {
            conversation_id: "c1".into(),
            before_seq: 5,
            after_seq: 2,
            limit: 10,
        }
        .encode_to_vec(),
        pb::RegisterRequest {
            username: "someone".into(),
            name: "n".into(),
            phone: "1".into(),
        }
        .encode_to_vec(),
        pb::CreateGroupRequest {
            name: "g".into(),
            members: vec!["bob".into()],
        }
        .encode_to_vec(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Truncate(usize),
    Append(Vec<u8>),
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    let random = proptest::collection::vec(any::<u8>(), 0..600);
    let mutated = (
        0..seeds.len(),
        proptest::collection::vec(
            prop_oneof![
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
                any::<usize>().prop_map(Mutation::Truncate),
                proptest::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
            ],
            1..4,
        ),
    )
        .prop_map(move |(seed, mutations)| {
            let mut bytes = seeds[seed].clone();
            for m in mutations {
                match m {
                    Mutation::Flip { at, byte } if !bytes.is_empty() => {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                    Mutation::Truncate(n) if !bytes.is_empty() => bytes.truncate(n % bytes.len()),
                    Mutation::Append(more) => bytes.extend(more),
                    _ => {}
                }
            }
            bytes
        });
    prop_oneof![random, mutated]
}

fn authorized<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("header"),
    );
    request
}

/// A status that says what was wrong, not that the server broke.
fn assert_clear(status: &tonic::Status, what: &str) {
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "{what}: {status:?}"
    );
}

async fn unary(channel: Channel, path: &'static str, body: Vec<u8>, secret: &str) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let answer = grpc
        .unary(
            authorized(body, secret),
            axum::http::uri::PathAndQuery::from_static(path),
            Raw,
        )
        .await;
    if let Err(status) = answer {
        assert_clear(&status, path);
    }
}

async fn stream(channel: Channel, frames: Vec<Vec<u8>>, secret: &str) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let outgoing = tokio_stream::iter(frames);
    let path = axum::http::uri::PathAndQuery::from_static("/chat.v1.ChatService/Connect");
    let answer = grpc
        .streaming(authorized(outgoing, secret), path, Raw)
        .await;
    let mut incoming = match answer {
        Ok(response) => response.into_inner(),
        Err(status) => return assert_clear(&status, "Connect"),
    };
    // Read until the server ends the stream (a bad frame ends it with a
    // status) or the client side closes.
    loop {
        match tokio::time::timeout(WAIT, incoming.message()).await {
            Err(_) => panic!("Connect neither answered nor ended within {WAIT:?}"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return,
            Ok(Err(status)) => return assert_clear(&status, "Connect"),
        }
    }
}

#[test]
fn garbage_requests_and_frames_get_clear_answers_and_change_nothing_for_others() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, alice, bob, mallory) = runtime.block_on(async {
        let server = TestServer::start().await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        // Sends the garbage. Its secret may get rotated on the way (an
        // empty message is a valid RotateSecretRequest): later calls are
        // then UNAUTHENTICATED, a clear answer too.
        let mallory = server.register("mallory").await;
        (server, alice, bob, mallory)
    });
    let channel = runtime.block_on(server.channel());

    let config = ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (0..UNARY.len() + 1, proptest::collection::vec(body(), 1..4));
    runner
        .run(&strategy, |(call, bodies)| {
            runtime.block_on(async {
                if call == UNARY.len() {
                    stream(channel.clone(), bodies, &mallory.secret).await;
                } else {
                    for body in bodies {
                        unary(channel.clone(), UNARY[call], body, &mallory.secret).await;
                    }
                }
            });
            Ok(())
        })
        .unwrap();

    // Everyone else is still served: a live session gets a new message.
    runtime.block_on(async {
        let mut bob_live = server.connect(&bob).await;
        let sent = server
            .chat(&alice)
            .await
            .send_message(send_request("bob", "still serving", "after-fuzz"))
            .await
            .expect("the server still takes sends")
            .into_inner()
            .message
            .unwrap();
        loop {
            let message = bob_live.message().await;
            if message.id == sent.id {
                break;
            }
        }
        server.stop().await;
    });
}

/// The specific answers: a string that is not UTF-8, a length past the end
/// of the message, and a wire type that does not exist are each
/// `INVALID_ARGUMENT`, saying the message is malformed.
#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe]; // field 1, 2 bytes, not UTF-8
    let past_the_end = vec![0x0a, 0x7f, b'a']; // field 1, 127 bytes, 1 given
    let bad_wire_type = vec![0x0f]; // field 1, wire type 7
    for body in [not_utf8, past_the_end, bad_wire_type] {
        for path in [
            "/chat.v1.UserService/Register",
            "/chat.v1.ChatService/SendMessage",
        ] {
            let mut grpc = tonic::client::Grpc::new(server.channel().await);
            grpc.ready().await.unwrap();
            let status = grpc
                .unary(
                    authorized(body.clone(), &alice.secret),
                    axum::http::uri::PathAndQuery::from_static(path),
                    Raw,
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(
                status.message().starts_with("malformed message"),
                "{status:?}"
            );
        }
    }
}
