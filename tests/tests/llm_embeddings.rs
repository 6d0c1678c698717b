//! The embeddings client against the OpenAI-compatible test server: batching, concurrency,
//! retries, Retry-After, truncation, dimension checks, timeouts and keys, over real HTTP.

use ragpipe_core::ErrorKind;
use ragpipe_core::config::ModelEndpoint;
use ragpipe_llm::{ClientOptions, Embedder, HashedEmbedder, LlmError, RetryPolicy, TokenCounter};
use ragpipe_tests::openai_server::{Fault, Framing, OpenAiServer, Route};
use std::time::{Duration, Instant};

/// Retries with short backoff so tests are quick; `Retry-After` is still honoured in full.
fn quick(endpoint: &ModelEndpoint, max_retries: u32) -> Embedder {
    let options = ClientOptions {
        retry: RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(10),
        },
        tokens: TokenCounter::default(),
    };
    Embedder::with_options(endpoint, options).expect("valid endpoint")
}

fn inputs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("passage number {i} about embeddings and vector search"))
        .collect()
}

/// The `input` arrays of the embedding requests the server received, in arrival order.
fn batches(server: &OpenAiServer) -> Vec<Vec<String>> {
    server
        .requests_to(Route::Embeddings)
        .iter()
        .map(|r| {
            r.body["input"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn rate_limited_twice_then_succeeds_after_waiting_retry_after() {
    let server = OpenAiServer::start().await;
    server.set_embedding_dim(64);
    server.inject(
        Route::Embeddings,
        Fault::RateLimited {
            retry_after_secs: Some(1),
        },
        2,
    );
    let embedder = quick(&server.embedding_endpoint(), 3);
    let started = Instant::now();
    let out = embedder.embed(&inputs(3)).await.expect("succeeds after two 429s");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited {:?}, Retry-After asked 2 x 1 s",
        started.elapsed()
    );
    assert_eq!(out.vectors.len(), 3);
    assert_eq!((out.requests, out.retries, out.rate_limited), (3, 2, 2));
    assert_eq!(server.requests_to(Route::Embeddings).len(), 3);
    let expected = HashedEmbedder::new(64);
    for (vector, input) in out.vectors.iter().zip(inputs(3)) {
        assert_eq!(vector, &expected.embed(&input));
    }
}

#[tokio::test]
async fn server_error_then_success() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::server_error(), 1);
    let out = quick(&server.embedding_endpoint(), 3)
        .embed(&inputs(2))
        .await
        .expect("retried");
    assert_eq!((out.requests, out.retries, out.rate_limited), (2, 1, 0));
    assert_eq!(out.vectors.len(), 2);
}

#[tokio::test]
async fn transient_errors_give_up_after_max_retries() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::server_error(), 10);
    let err = quick(&server.embedding_endpoint(), 2)
        .embed(&inputs(1))
        .await
        .expect_err("always 500");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(matches!(err, LlmError::Status { status: 500, .. }), "{err}");
    assert_eq!(
        server.requests_to(Route::Embeddings).len(),
        3,
        "one try and two retries"
    );
}

#[tokio::test]
async fn client_errors_are_permanent_and_not_retried() {
    let server = OpenAiServer::start().await;
    let body = r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
    server.inject(
        Route::Embeddings,
        Fault::Status {
            status: 404,
            body: body.into(),
        },
        1,
    );
    let err = quick(&server.embedding_endpoint(), 3)
        .embed(&inputs(1))
        .await
        .expect_err("404");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(server.requests_to(Route::Embeddings).len(), 1);
}

#[tokio::test]
async fn batches_by_count_in_input_order() {
    let server = OpenAiServer::start().await;
    let mut endpoint = server.embedding_endpoint();
    endpoint.batch_size = 3;
    endpoint.concurrency = 1;
    let inputs = inputs(7);
    let out = quick(&endpoint, 0).embed(&inputs).await.expect("embedded");
    assert_eq!(
        batches(&server),
        vec![inputs[0..3].to_vec(), inputs[3..6].to_vec(), inputs[6..7].to_vec()]
    );
    assert_eq!(out.requests, 3);
    let expected = HashedEmbedder::new(endpoint.dim as usize);
    assert!(
        out.vectors.iter().zip(&inputs).all(|(v, i)| *v == expected.embed(i)),
        "vectors in input order"
    );
    let counted: usize = inputs.iter().map(|i| TokenCounter::default().count(i)).sum();
    assert_eq!(
        out.prompt_tokens, counted as u64,
        "the server's usage, which counts the same way"
    );
}

#[tokio::test]
async fn batches_by_tokens() {
    let server = OpenAiServer::start().await;
    let mut endpoint = server.embedding_endpoint();
    endpoint.batch_size = 100;
    endpoint.batch_tokens = 50;
    endpoint.concurrency = 1;
    let tokens = TokenCounter::default();
    let inputs: Vec<String> = (0..9).map(|i| format!("{i} {}", "token ".repeat(5 + i * 2))).collect();
    let out = quick(&endpoint, 0).embed(&inputs).await.expect("embedded");
    let sent = batches(&server);
    assert!(sent.len() > 2, "{sent:?}");
    for batch in &sent {
        let total: usize = batch.iter().map(|i| tokens.count(i)).sum();
        assert!(total <= 50 || batch.len() == 1, "batch of {total} tokens: {batch:?}");
    }
    assert_eq!(sent.concat(), inputs, "every input once, in order");
    assert_eq!(out.vectors.len(), inputs.len());
}

#[tokio::test]
async fn batches_run_concurrently_up_to_the_limit() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_millis(400)), 6);
    let mut endpoint = server.embedding_endpoint();
    endpoint.batch_size = 1;
    endpoint.concurrency = 3;
    let inputs = inputs(6);
    let started = Instant::now();
    let out = quick(&endpoint, 0).embed(&inputs).await.expect("embedded");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
    // At most three in flight: the fourth request arrives only after the first answered.
    let log = server.requests_to(Route::Embeddings);
    assert!(log[3].received_at.duration_since(log[0].received_at) >= Duration::from_millis(350));
    let expected = HashedEmbedder::new(endpoint.dim as usize);
    assert!(
        out.vectors.iter().zip(&inputs).all(|(v, i)| *v == expected.embed(i)),
        "order kept"
    );
}

#[tokio::test]
async fn inputs_are_cut_to_the_model_input_limit() {
    let server = OpenAiServer::start().await;
    server.set_embedding_max_input_tokens(Some(16));
    let mut endpoint = server.embedding_endpoint();
    endpoint.max_input_tokens = 16;
    let long = "a long chunk with many words in it ".repeat(20);
    let out = quick(&endpoint, 0)
        .embed(&[long.clone(), "short".into()])
        .await
        .expect("within the limit");
    assert_eq!(out.truncated, 1);
    let sent = &batches(&server)[0];
    assert_eq!(sent[0], TokenCounter::default().truncate(&long, 16));
    assert_eq!(sent[1], "short");
}

#[tokio::test]
async fn input_over_the_server_limit_is_context_too_long() {
    let server = OpenAiServer::start().await;
    server.set_embedding_max_input_tokens(Some(16));
    let mut endpoint = server.embedding_endpoint();
    endpoint.max_input_tokens = 512;
    let err = quick(&endpoint, 3)
        .embed(&["word ".repeat(100)])
        .await
        .expect_err("over the server's limit");
    assert_eq!(err.kind(), ErrorKind::ContextTooLong, "{err}");
    assert_eq!(server.requests_to(Route::Embeddings).len(), 1, "not retried");
}

#[tokio::test]
async fn dimension_mismatch_is_permanent_and_names_both() {
    let server = OpenAiServer::start().await;
    server.set_embedding_dim(32);
    let mut endpoint = server.embedding_endpoint();
    endpoint.dim = 64;
    let err = quick(&endpoint, 3)
        .embed(&inputs(2))
        .await
        .expect_err("wrong dimension");
    assert!(
        matches!(
            err,
            LlmError::DimensionMismatch {
                expected: 64,
                got: 32,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(
        err.to_string().contains("64") && err.to_string().contains("32"),
        "{err}"
    );
    assert_eq!(server.requests_to(Route::Embeddings).len(), 1);
}

#[tokio::test]
async fn slow_server_times_out_then_retry_succeeds() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(3)), 1);
    let mut endpoint = server.embedding_endpoint();
    endpoint.timeout_secs = 1;
    let started = Instant::now();
    let out = quick(&endpoint, 1)
        .embed(&inputs(1))
        .await
        .expect("second attempt is fast");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((out.requests, out.retries), (2, 1));

    server.inject(Route::Embeddings, Fault::Delay(Duration::from_secs(3)), 1);
    let err = quick(&endpoint, 0)
        .embed(&inputs(1))
        .await
        .expect_err("no retries left");
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);
}

#[tokio::test]
async fn connection_cut_mid_body_is_transient_and_retried() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::CutAfter { deltas: 0 }, 1);
    let out = quick(&server.embedding_endpoint(), 2)
        .embed(&inputs(2))
        .await
        .expect("retried");
    assert_eq!((out.requests, out.retries), (2, 1));

    server.inject(Route::Embeddings, Fault::CutAfter { deltas: 0 }, 1);
    let err = quick(&server.embedding_endpoint(), 0)
        .embed(&inputs(2))
        .await
        .expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let server = OpenAiServer::start().await;
    let mut endpoint = server.embedding_endpoint();
    endpoint.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    let err = quick(&endpoint, 1)
        .embed(&inputs(1))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, LlmError::Connection { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);
}

#[tokio::test]
async fn api_key_is_sent_as_bearer() {
    let server = OpenAiServer::start().await;
    server.require_api_key(Some("sk-test-123"));
    let mut endpoint = server.embedding_endpoint();
    endpoint.api_key = Some("sk-test-123".into());
    quick(&endpoint, 0).embed(&inputs(1)).await.expect("authorised");
    assert_eq!(
        server.requests()[0].authorization.as_deref(),
        Some("Bearer sk-test-123")
    );

    endpoint.api_key = None;
    let err = quick(&endpoint, 3).embed(&inputs(1)).await.expect_err("no key");
    assert!(matches!(err, LlmError::Status { status: 401, .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(
        server.requests()[1].authorization,
        None,
        "no empty bearer and nothing from OPENAI_API_KEY"
    );
}

#[tokio::test]
async fn concurrent_calls_share_the_concurrency_limit() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::Delay(Duration::from_millis(400)), 4);
    let mut endpoint = server.embedding_endpoint();
    endpoint.batch_size = 1;
    endpoint.concurrency = 2;
    let embedder = quick(&endpoint, 0);
    let other = embedder.clone();
    let (first, second) = (inputs(2), inputs(2));
    let (a, b) = tokio::join!(embedder.embed(&first), other.embed(&second));
    a.expect("first call");
    b.expect("second call");
    let log = server.requests_to(Route::Embeddings);
    assert_eq!(log.len(), 4);
    assert!(
        log[2].received_at.duration_since(log[0].received_at) >= Duration::from_millis(350),
        "two calls of two batches each ran at most two requests at once"
    );
}

#[tokio::test]
async fn totals_count_failed_calls_too() {
    let server = OpenAiServer::start().await;
    server.inject(Route::Embeddings, Fault::RateLimited { retry_after_secs: None }, 3);
    let embedder = quick(&server.embedding_endpoint(), 1);
    embedder.embed(&inputs(1)).await.expect_err("429 twice with one retry");
    let totals = embedder.totals();
    assert_eq!((totals.requests, totals.retries, totals.rate_limited), (2, 1, 2));
    embedder.embed(&inputs(1)).await.expect("429 then success");
    assert_eq!(embedder.clone().totals().requests, 4);
}

/// A body cut mid-JSON is a lost connection, not a malformed answer, however the response was
/// framed (a declared length, chunks, or none: the body ends at the close): the batch is
/// retried and the call succeeds.
#[tokio::test]
async fn truncated_bodies_with_and_without_a_length_are_retried() {
    for framing in [Framing::ContentLength, Framing::Chunked, Framing::UntilClose] {
        let server = OpenAiServer::start().await;
        server.set_embedding_dim(64);
        server.inject(Route::Embeddings, Fault::Truncated { framing }, 1);
        let out = quick(&server.embedding_endpoint(), 2)
            .embed(&inputs(40))
            .await
            .unwrap_or_else(|e| panic!("{framing:?}: {e}"));
        assert_eq!(out.vectors.len(), 40);
        assert_eq!((out.requests, out.retries), (2, 1), "{framing:?}");

        server.inject(Route::Embeddings, Fault::Truncated { framing }, 1);
        let err = quick(&server.embedding_endpoint(), 0)
            .embed(&inputs(40))
            .await
            .expect_err("cut, no retries left");
        assert_eq!(err.kind(), ErrorKind::Transient, "{framing:?}: {err}");
    }
}
