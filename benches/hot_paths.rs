//! The pure hot paths, without servers, so a regression shows in `cargo bench` before it shows in benches/run.sh:
//! image reference parsing, policy evaluation with the 50-rule benchmark policy, a whole review through /validate's
//! and /mutate's pure logic, manifest parsing and validation, digest hashing throughput, and authentication (no
//! credentials, a berth token verified before, a token's first verification, scope parsing).

use std::hint::black_box;

use berth::admission::image::ImageRef;
use berth::admission::policy::Policy;
use berth::admission::review::Workload;
use berth::admission::{rewrite, scope, validate};
use berth::registry::hashing::Hasher;
use berth::registry::manifest;
use berth::registry::names::Algorithm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kube::core::admission::{AdmissionRequest, AdmissionReview};

const POLICY: &str = include_str!("policy-50.yaml");
const REVIEW: &str = include_str!("pod-review.json");

const IMAGES: &[&str] = &[
    "nginx",
    "busybox:1.36.1",
    "envoyproxy/envoy:v1.30.1",
    "registry.example.com/shop/web:2.14.1",
    "quay.io/prometheus/node-exporter:v1.8.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "[::1]:5000/team/app:2",
];

fn references(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Elements(IMAGES.len() as u64));
    group.bench_function("parse+normalise 6 images", |b| {
        b.iter(|| {
            for image in IMAGES {
                let parsed = ImageRef::parse(black_box(image)).expect("valid");
                black_box(parsed.to_string());
            }
        })
    });
    group.finish();
}

fn policy(c: &mut Criterion) {
    let policy = Policy::from_yaml(POLICY).expect("benchmark policy");
    let mut group = c.benchmark_group("policy (50 rules)");
    group.bench_function("compile", |b| {
        b.iter(|| Policy::from_yaml(black_box(POLICY)).expect("valid"))
    });
    group.throughput(Throughput::Elements(IMAGES.len() as u64));
    group.bench_function("decide 6 images in shop-prod", |b| {
        b.iter(|| {
            for image in IMAGES {
                black_box(policy.decide(black_box(image), "shop-prod"));
            }
        })
    });
    group.finish();

    let review: AdmissionReview<Workload> = serde_json::from_str(REVIEW).expect("review");
    let request: AdmissionRequest<Workload> = review.try_into().expect("request");
    let mut group = c.benchmark_group("review (benches/pod-review.json)");
    group.throughput(Throughput::Bytes(REVIEW.len() as u64));
    group.bench_function("parse JSON", |b| {
        b.iter(|| {
            let review: AdmissionReview<Workload> =
                serde_json::from_str(black_box(REVIEW)).expect("review");
            black_box(review)
        })
    });
    group.bench_function("validate (pure)", |b| {
        b.iter(|| {
            black_box(validate::validate(
                &request,
                &policy,
                &scope::Scope::new("berth-system"),
            ))
        })
    });
    group.bench_function("plan mutation + patch (pure)", |b| {
        b.iter(|| {
            let plan =
                rewrite::plan_mutation(&request, &policy, &scope::Scope::new("berth-system"));
            let available = vec![true; plan.candidates.len()];
            black_box(rewrite::build_patch(&plan, &available))
        })
    });
    group.finish();
}

fn manifests(c: &mut Criterion) {
    let layer = |i: usize| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{:064x}","size":{}}}"#,
            i + 1,
            1000 + i
        )
    };
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":1469}},"layers":[{}],"annotations":{{"org.opencontainers.image.source":"https://example.com/app"}}}}"#,
        0,
        (0..8).map(layer).collect::<Vec<_>>().join(",")
    );
    let mut group = c.benchmark_group("manifest");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse+validate OCI image, 8 layers", |b| {
        b.iter(|| {
            manifest::parse(
                black_box(bytes.as_bytes()),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .expect("valid")
        })
    });
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    for (name, algorithm) in [
        ("sha256 16 MiB", Algorithm::Sha256),
        ("sha512 16 MiB", Algorithm::Sha512),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut hasher = Hasher::new(algorithm);
                // In 256 KiB pieces, as request bodies arrive.
                for piece in data.chunks(256 * 1024) {
                    hasher.update(black_box(piece));
                }
                hasher.digest()
            })
        });
    }
    group.finish();
}

/// A TokenReviewer that refuses every token (the benchmarks never reach it; it only turns auth on).
struct Refuses;

#[async_trait::async_trait]
impl berth::auth::tokenreview::TokenReviewer for Refuses {
    async fn review(
        &self,
        _token: &str,
        _audiences: &[String],
    ) -> Result<berth::auth::tokenreview::ReviewOutcome, berth::auth::tokenreview::ReviewError>
    {
        Ok(berth::auth::tokenreview::ReviewOutcome::Rejected(
            "benchmark".into(),
        ))
    }
}

fn auth(c: &mut Criterion) {
    use berth::auth::authenticator::{AuthenticatorParts, Presented};
    use berth::auth::token::{generate_key, TokenIssuer};
    use berth::auth::{Authenticator, Grant, Identity};
    use std::sync::Arc;
    use std::time::Duration;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let clock = berth::clock::system();
    let key = generate_key().expect("key");
    let issuer = || {
        TokenIssuer::new(
            &key,
            std::path::Path::new("token.key"),
            Duration::from_secs(300),
            clock.clone(),
        )
        .expect("issuer")
    };
    let authenticator = Authenticator::new(AuthenticatorParts {
        htpasswd: None,
        reviews: Some(berth::auth::tokenreview::CachedReviews::new(
            Arc::new(Refuses),
            vec!["berth".into()],
            Duration::from_secs(30),
            clock.clone(),
        )),
        issuer: Some(issuer()),
        node_proxy: None,
        clock: clock.clone(),
    });
    let identity = Identity::ServiceAccount {
        namespace: "team-a".into(),
        name: "ci".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:team-a".into(),
        ],
    };
    let grants = vec![Grant {
        resource_type: "repository".into(),
        name: "team-a/app".into(),
        actions: vec!["pull".into(), "push".into()],
    }];
    let token = authenticator
        .issuer()
        .expect("issuer")
        .issue(&identity, grants.clone())
        .expect("issue")
        .token;
    let header = format!("Bearer {token}");
    let mut group = c.benchmark_group("auth");
    group.bench_function("authenticate: no credentials", |b| {
        b.iter(|| runtime.block_on(authenticator.authenticate(black_box(&Presented::default()))))
    });
    group.bench_function("authenticate: berth token verified before", |b| {
        let presented = Presented {
            authorization: Some(header.as_bytes()),
            ..Presented::default()
        };
        b.iter(|| runtime.block_on(authenticator.authenticate(black_box(&presented))))
    });
    group.bench_function(
        "verify: a berth token the first time (ES256, issuer setup included)",
        |b| b.iter(|| issuer().verify(black_box(&token))),
    );
    group.bench_function("parse 3 scopes", |b| {
        b.iter(|| {
            berth::auth::parse_scopes(black_box(
                [
                    "repository:team-a/app:pull,push",
                    "repository:proxy/docker.io/library/nginx:pull registry:catalog:*",
                ]
                .into_iter(),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, references, policy, manifests, hashing, auth);
criterion_main!(benches);
