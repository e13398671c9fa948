//! The local embedder for real: all-MiniLM-L6-v2 from `scripts/fetch-models`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bulkhead_inference::LocalEmbedder;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_are_unit_length_and_close_for_close_meanings() {
    let embedder = LocalEmbedder::load(&bulkhead_testkit::local_embedder()).unwrap();
    assert_eq!(embedder.dimensions(), 384);
    let texts = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Quarterly revenue fell by four percent in the European market.",
    ];
    let vectors = embedder.embed(&texts).unwrap();
    assert_eq!(vectors.len(), 3);
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        assert!((dot(vector, vector) - 1.0).abs() < 1e-4);
    }
    let close = dot(&vectors[0], &vectors[1]);
    let far = dot(&vectors[0], &vectors[2]);
    assert!(close > 0.6, "paraphrases scored {close}");
    assert!(far < 0.2, "unrelated texts scored {far}");
}

#[test]
fn padding_in_a_batch_does_not_change_a_vector() {
    let embedder = LocalEmbedder::load(&bulkhead_testkit::local_embedder()).unwrap();
    let short = "refund policy";
    let long = "Refunds are issued within fourteen days of the request, to the original \
                payment method, once the returned item has been inspected.";
    let alone = embedder.embed(&[short]).unwrap();
    let batched = embedder.embed(&[short, long]).unwrap();
    let drift: f32 = alone[0]
        .iter()
        .zip(&batched[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(drift < 1e-4, "padding moved the vector by {drift}");
    assert!(embedder.count_tokens(long) > 20);
    assert!(embedder.embed(&[]).unwrap().is_empty());
}
