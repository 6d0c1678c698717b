//! The streaming chat client against the OpenAI-compatible test server: usage, llama.cpp's
//! quirks, streams cut mid-answer, retries before the first delta, timeouts; and the server's
//! own wire format, checked byte for byte.

use futures::StreamExt;
use ragpipe_core::ErrorKind;
use ragpipe_core::config::ModelEndpoint;
use ragpipe_llm::{
    ChatEvent, ChatMessage, ChatModel, ChatRequest, ChatStream, ClientOptions, FinishReason, LlmError, RetryPolicy,
    TokenCounter, count_prompt_tokens,
};
use ragpipe_tests::openai_server::{Fault, Framing, OpenAiServer, Route, ScriptedReply};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn quick(endpoint: &ModelEndpoint, max_retries: u32) -> ChatModel {
    let options = ClientOptions {
        retry: RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(10),
        },
        tokens: TokenCounter::default(),
    };
    ChatModel::with_options(endpoint, options).expect("valid endpoint")
}

fn question() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("Answer from the numbered sources and cite them as [n]."),
            ChatMessage::user("How are embedding requests batched and retried?"),
        ],
        max_tokens: 256,
        sources: Vec::new(),
    }
}

/// Every item of the stream, errors included.
async fn drain(stream: ChatStream) -> Vec<Result<ChatEvent, LlmError>> {
    stream.collect().await
}

fn text_of(events: &[Result<ChatEvent, LlmError>]) -> String {
    events
        .iter()
        .filter_map(|e| {
            if let Ok(ChatEvent::Delta(d)) = e {
                Some(d.as_str())
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test]
async fn streams_a_scripted_reply_with_server_usage() {
    let server = OpenAiServer::start().await;
    let reply = ScriptedReply::fixture("cites-two-sources").expect("fixture");
    server.push_reply(reply.clone());
    let stream = quick(&server.chat_endpoint(), 0)
        .stream(question())
        .await
        .expect("stream opens");
    assert_eq!((stream.requests(), stream.retries()), (1, 0));
    let events = drain(stream).await;
    assert_eq!(text_of(&events), reply.full_text());
    assert!(
        events.iter().filter(|e| matches!(e, Ok(ChatEvent::Delta(_)))).count() > 10,
        "word-sized deltas"
    );
    let n = events.len();
    assert!(matches!(
        &events[n - 2],
        Ok(ChatEvent::Usage {
            prompt_tokens: 812,
            completion_tokens: 41,
            counted_locally: false
        })
    ));
    assert!(matches!(
        &events[n - 1],
        Ok(ChatEvent::Finish {
            reason: FinishReason::Stop
        })
    ));

    let sent = &server.requests_to(Route::ChatCompletions)[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.body["max_tokens"], 256);
    assert!(sent.body.get("max_completion_tokens").is_none());
    assert_eq!(sent.body["model"], "test-chat");
    assert!(
        sent.body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["content"].is_string()))
    );
    assert!(
        sent.first_token_at.is_some_and(|t| t >= sent.received_at),
        "first token time recorded"
    );
}

#[tokio::test]
async fn zero_max_tokens_means_the_endpoint_limit() {
    let server = OpenAiServer::start().await;
    let mut endpoint = server.chat_endpoint();
    endpoint.max_output_tokens = 333;
    let request = ChatRequest {
        max_tokens: 0,
        ..question()
    };
    drain(quick(&endpoint, 0).stream(request).await.expect("stream")).await;
    assert_eq!(server.requests()[0].body["max_tokens"], 333);
}

#[tokio::test]
async fn max_tokens_stops_the_answer_with_length() {
    let server = OpenAiServer::start().await;
    server.push_reply(
        ScriptedReply::fixture("slow-long-answer")
            .expect("fixture")
            .with_delta_delay(Duration::ZERO),
    );
    let request = ChatRequest {
        max_tokens: 10,
        ..question()
    };
    let events = drain(quick(&server.chat_endpoint(), 0).stream(request).await.expect("stream")).await;
    assert!(matches!(
        events.last(),
        Some(Ok(ChatEvent::Finish {
            reason: FinishReason::Length
        }))
    ));
    assert!(TokenCounter::default().count(&text_of(&events)) <= 10);
}

#[tokio::test]
async fn llama_cpp_stream_without_usage_is_counted_locally() {
    let server = OpenAiServer::start().await;
    server.set_llama_cpp_mode(true);
    let reply = ScriptedReply::fixture("sources-do-not-answer").expect("fixture");
    server.push_reply(reply.clone());
    let request = question();
    let events = drain(
        quick(&server.chat_endpoint(), 0)
            .stream(request.clone())
            .await
            .expect("stream"),
    )
    .await;
    let text = text_of(&events);
    assert_eq!(text, reply.full_text());
    let tokens = TokenCounter::default();
    let n = events.len();
    match &events[n - 2] {
        Ok(ChatEvent::Usage {
            prompt_tokens,
            completion_tokens,
            counted_locally: true,
        }) => {
            assert_eq!(*prompt_tokens, count_prompt_tokens(&tokens, &request.messages));
            assert_eq!(*completion_tokens, tokens.count(&text) as u64);
        }
        other => panic!("expected locally counted usage, got {other:?}"),
    }
    assert!(matches!(
        &events[n - 1],
        Ok(ChatEvent::Finish {
            reason: FinishReason::Stop
        })
    ));
}

#[tokio::test]
async fn stream_cut_mid_answer_errors_after_the_partial_deltas() {
    let server = OpenAiServer::start().await;
    server.push_reply(ScriptedReply::text("one two three four five six seven eight nine ten"));
    server.inject(Route::ChatCompletions, Fault::CutAfter { deltas: 3 }, 1);
    let stream = quick(&server.chat_endpoint(), 3)
        .stream(question())
        .await
        .expect("first delta arrived");
    let events = drain(stream).await;
    assert_eq!(text_of(&events), "one two three");
    assert_eq!(
        events.len(),
        4,
        "three deltas then the error, nothing after: {events:?}"
    );
    let err = events[3].as_ref().expect_err("the cut is an error");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(server.requests().len(), 1, "no retry once deltas were delivered");
}

#[tokio::test]
async fn done_without_finish_reason_is_an_error() {
    let server = OpenAiServer::start().await;
    server.set_llama_cpp_mode(true);
    server.push_reply(ScriptedReply::text("alpha beta gamma delta"));
    server.inject(Route::ChatCompletions, Fault::EndWithoutFinish { deltas: 2 }, 1);
    let events = drain(
        quick(&server.chat_endpoint(), 0)
            .stream(question())
            .await
            .expect("stream"),
    )
    .await;
    assert_eq!(text_of(&events), "alpha beta");
    match events.last() {
        Some(Err(LlmError::StreamIncomplete { deltas: 2, .. })) => {}
        other => panic!("expected StreamIncomplete, got {other:?}"),
    }
}

#[tokio::test]
async fn failures_before_the_first_delta_are_retried() {
    let server = OpenAiServer::start().await;
    server.set_default_reply(ScriptedReply::text("complete answer"));
    server.inject(Route::ChatCompletions, Fault::CutAfter { deltas: 0 }, 1);
    server.inject(Route::ChatCompletions, Fault::server_error(), 1);
    let stream = quick(&server.chat_endpoint(), 3)
        .stream(question())
        .await
        .expect("third attempt works");
    assert_eq!((stream.requests(), stream.retries(), stream.rate_limited()), (3, 2, 0));
    let events = drain(stream).await;
    assert_eq!(text_of(&events), "complete answer");
    assert!(matches!(events.last(), Some(Ok(ChatEvent::Finish { .. }))));
}

#[tokio::test]
async fn rate_limit_before_streaming_waits_retry_after() {
    let server = OpenAiServer::start().await;
    server.inject(
        Route::ChatCompletions,
        Fault::RateLimited {
            retry_after_secs: Some(1),
        },
        1,
    );
    let started = Instant::now();
    let stream = quick(&server.chat_endpoint(), 2)
        .stream(question())
        .await
        .expect("second attempt works");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!((stream.retries(), stream.rate_limited()), (1, 1));
}

#[tokio::test]
async fn errors_before_streaming_are_classified() {
    let server = OpenAiServer::start().await;
    server.inject(Route::ChatCompletions, Fault::server_error(), 5);
    let err = quick(&server.chat_endpoint(), 1)
        .stream(question())
        .await
        .expect_err("500 twice");
    assert!(matches!(err, LlmError::Status { status: 500, .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(server.requests().len(), 2);

    let server = OpenAiServer::start().await;
    let body = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    server.inject(
        Route::ChatCompletions,
        Fault::Status {
            status: 400,
            body: body.into(),
        },
        1,
    );
    let err = quick(&server.chat_endpoint(), 3)
        .stream(question())
        .await
        .expect_err("too long");
    assert_eq!(err.kind(), ErrorKind::ContextTooLong, "{err}");
    assert_eq!(server.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn slow_headers_time_out() {
    let server = OpenAiServer::start().await;
    server.inject(Route::ChatCompletions, Fault::Delay(Duration::from_secs(3)), 1);
    let mut endpoint = server.chat_endpoint();
    endpoint.timeout_secs = 1;
    let started = Instant::now();
    let err = quick(&endpoint, 0)
        .stream(question())
        .await
        .expect_err("no headers within 1 s");
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn a_stalled_stream_times_out_after_its_partial_deltas() {
    let server = OpenAiServer::start().await;
    server.push_reply(ScriptedReply::text("first second third fourth"));
    server.inject(
        Route::ChatCompletions,
        Fault::StallAfter {
            deltas: 2,
            pause: Duration::from_secs(3),
        },
        1,
    );
    let mut endpoint = server.chat_endpoint();
    endpoint.timeout_secs = 1;
    let events = drain(quick(&endpoint, 0).stream(question()).await.expect("stream")).await;
    assert_eq!(text_of(&events), "first second");
    assert!(
        matches!(events.last(), Some(Err(LlmError::Timeout { .. }))),
        "{events:?}"
    );
}

/// Sends one HTTP/1.1 request and returns the raw response (head and body).
async fn raw_post(base_url: &str, path: &str, body: &str) -> String {
    let authority = base_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect to the test server");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn server_speaks_both_wire_dialects() {
    let server = OpenAiServer::start().await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    server.push_reply(ScriptedReply::text("hello world"));
    let openai = raw_post(server.base_url(), "/v1/chat/completions", body).await;
    assert!(openai.contains("text/event-stream"));
    assert!(
        openai.contains(r#""delta":{"content":"","role":"assistant"}"#)
            || openai.contains(r#""delta":{"role":"assistant","content":""}"#),
        "{openai}"
    );
    assert!(
        openai.contains("}\r\n\r\n") && openai.contains(r#""choices":[],"#) && openai.contains("data: [DONE]"),
        "{openai}"
    );

    server.set_llama_cpp_mode(true);
    server.push_reply(ScriptedReply::text("hello world"));
    let llama = raw_post(server.base_url(), "/v1/chat/completions", body).await;
    let (_, sse) = llama.split_once("\r\n\r\n").expect("head and body");
    assert!(
        sse.contains("}\n\n") && !sse.contains("}\r\n\r\n"),
        "LF-only events: {sse:?}"
    );
    assert!(sse.contains(": ping"), "{sse}");
    assert!(
        !sse.contains("\"usage\""),
        "llama.cpp sends no usage while streaming: {sse}"
    );
    assert!(sse.contains(r#""delta":{"role":"assistant"}"#), "{sse}");

    let parts = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true}"#;
    let refused = raw_post(server.base_url(), "/v1/chat/completions", parts).await;
    assert!(
        refused.starts_with("HTTP/1.1 500"),
        "llama.cpp refuses content parts: {refused}"
    );

    server.set_llama_cpp_mode(false);
    server.push_reply(ScriptedReply::text("hello world").with_usage(5, 2));
    let plain = raw_post(
        server.base_url(),
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let (_, json) = plain.split_once("\r\n\r\n").expect("head and body");
    let json: serde_json::Value = serde_json::from_str(json).expect("JSON body");
    assert_eq!(json["choices"][0]["message"]["content"], "hello world");
    assert_eq!(json["usage"]["total_tokens"], 7);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_generation() {
    let server = OpenAiServer::start().await;
    server.push_reply(ScriptedReply::fixture("slow-long-answer").expect("fixture"));
    let mut stream = quick(&server.chat_endpoint(), 0)
        .stream(question())
        .await
        .expect("stream");
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Delta(_)))));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !server.requests()[0].disconnected {
        assert!(Instant::now() < deadline, "the server never saw the client go away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.push_reply(ScriptedReply::text("short and complete"));
    drain(
        quick(&server.chat_endpoint(), 0)
            .stream(question())
            .await
            .expect("stream"),
    )
    .await;
    assert!(
        !server.requests()[1].disconnected,
        "a stream read to the end is not a disconnect"
    );
}

/// A stream cut in the middle of its first content event is a lost connection, however the
/// response was framed (a declared length, chunks, or none: the body ends at the close):
/// retried before any delta, and the answer completes.
#[tokio::test]
async fn truncated_streams_with_and_without_a_length_are_retried() {
    for framing in [Framing::ContentLength, Framing::Chunked, Framing::UntilClose] {
        let server = OpenAiServer::start().await;
        server.set_default_reply(ScriptedReply::text("complete answer after a cut"));
        server.inject(Route::ChatCompletions, Fault::Truncated { framing }, 1);
        let stream = quick(&server.chat_endpoint(), 2)
            .stream(question())
            .await
            .unwrap_or_else(|e| panic!("{framing:?}: {e}"));
        assert_eq!((stream.requests(), stream.retries()), (2, 1), "{framing:?}");
        let events = drain(stream).await;
        assert_eq!(text_of(&events), "complete answer after a cut");

        server.inject(Route::ChatCompletions, Fault::Truncated { framing }, 1);
        let err = quick(&server.chat_endpoint(), 0)
            .stream(question())
            .await
            .err()
            .unwrap_or_else(|| panic!("{framing:?}: the cut stream opened"));
        assert_eq!(err.kind(), ErrorKind::Transient, "{framing:?}: {err}");
    }
}
