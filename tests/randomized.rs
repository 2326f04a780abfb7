//! Seeded randomized tests of the parsers of client input: the seeds of the fuzz targets (tests/fuzz/seeds), mutated
//! by a small deterministic PRNG, thrown at the same property checks the fuzz targets run (tests/fuzz/properties.rs).
//! No nightly, no process, a fixed seed: a failure reproduces on every run, and its message holds the input. The
//! coverage-guided search for longer runs is `cargo fuzz` (README, Development).

use std::path::Path;

#[path = "fuzz/properties.rs"]
mod properties;

/// SplitMix64: tiny, fast, and good enough to pick mutations; the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces that parsers treat specially, inserted whole: separators, escapes, the edges of u64, JSON syntax.
const TOKENS: &[&str] = &[
    "/",
    ":",
    "@",
    ".",
    "..",
    "-",
    "_",
    "__",
    "%",
    "%2e",
    "%2F",
    "%3A",
    ",",
    "=",
    "[",
    "]",
    "+",
    " ",
    "*",
    "bytes=",
    "bytes ",
    "sha256:",
    "sha512:",
    "localhost",
    "docker.io/",
    "0",
    "9",
    "a",
    "A",
    "\u{e9}",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "\"",
    "{",
    "}",
    "[]",
    "null",
    "\"size\":",
    "\"digest\":",
    "\"mediaType\":",
    "\"manifests\":",
    "\"layers\":",
    "-9223372036854775808",
    "1e400",
];

/// One mutation of `input`, using the other seeds for splices.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(2) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            // Flip a bit.
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            // Replace a byte with any byte.
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            // Delete a span.
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            // Duplicate a span.
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(16)).min(out.len());
                let span = out[start..end].to_vec();
                out.splice(at..at, span);
            }
            // Splice in part of another seed.
            4 => {
                let other = rng.pick(seeds);
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(32)).min(other.len());
                    out.splice(at..at, other[start..end].iter().copied());
                }
            }
            // Insert a token.
            _ => {
                let token = rng.pick(TOKENS).as_bytes();
                out.splice(at..at, token.iter().copied());
            }
        }
    }
    out
}

/// Values a manifest field may be given: edge numbers, near-miss digests and media types.
fn json_replacement(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    let digest = format!("sha256:{}", "e".repeat(64));
    let choices = [
        json!(null),
        json!(-1),
        json!(0),
        json!(2),
        json!(1.5),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(""),
        json!(digest),
        json!(digest.to_uppercase()),
        json!(format!("sha512:{}", "f".repeat(128))),
        json!("sha256:abc"),
        json!("md5:0123"),
        json!("application/vnd.oci.image.manifest.v1+json"),
        json!("application/vnd.oci.image.index.v1+json"),
        json!("application/vnd.oci.image.layer.nondistributable.v1.tar"),
        json!("application/x-nondistributable-made-up"),
        json!([]),
        json!({}),
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": 1}),
    ];
    rng.pick(&choices).clone()
}

/// Changes one node of a JSON document: replaced, removed, or (in an array) duplicated.
fn mutate_json(rng: &mut Rng, value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) if !map.is_empty() && rng.below(3) != 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(6) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, json_replacement(rng));
                }
                _ => mutate_json(rng, map.get_mut(&key).expect("key just listed")),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(3) != 0 => {
            let i = rng.below(items.len());
            match rng.below(5) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let copy = items[i].clone();
                    items.push(copy);
                }
                _ => mutate_json(rng, &mut items[i]),
            }
        }
        other => *other = json_replacement(rng),
    }
}

fn structured(target: &str) -> bool {
    target == "manifest"
}

/// A manifest input (selector byte, JSON body) with its JSON mutated as JSON; `None` when the body is no JSON.
fn mutate_manifest(rng: &mut Rng, input: &[u8]) -> Option<Vec<u8>> {
    let (&selector, body) = input.split_first()?;
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    for _ in 0..=rng.below(2) {
        mutate_json(rng, &mut value);
    }
    let selector = if rng.below(8) == 0 {
        rng.next() as u8
    } else {
        selector
    };
    let mut out = vec![selector];
    out.extend(serde_json::to_vec(&value).ok()?);
    Some(out)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("seed entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).expect("seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Runs `check` on every seed and on `rounds` mutants, each mutant grown from a seed or from an earlier mutant.
/// At least `min_accepted` mutants must be accepted by a parser: mutants that are all garbage would test nothing
/// but the first line of each parser.
fn run(target: &str, rounds: usize, min_accepted: usize, check: fn(&[u8]) -> bool) {
    let seeds = seeds(target);
    let mut rng = Rng(0xb3e7_5eed ^ target.len() as u64);
    let mut pool = seeds.clone();
    for seed in &seeds {
        check(seed);
    }
    let mut accepted = 0;
    for _ in 0..rounds {
        // Half the time from a seed, so most mutants stay near valid input.
        let parent = if rng.below(2) == 0 {
            rng.pick(&seeds).clone()
        } else {
            rng.pick(&pool).clone()
        };
        let child = if structured(target) && rng.below(4) != 0 {
            mutate_manifest(&mut rng, &parent).unwrap_or_else(|| mutate(&mut rng, &parent, &seeds))
        } else {
            mutate(&mut rng, &parent, &seeds)
        };
        accepted += usize::from(check(&child));
        // Keep a bounded pool of recent mutants, so mutations stack up.
        if pool.len() < 256 {
            pool.push(child);
        } else {
            let slot = seeds.len() + rng.below(256 - seeds.len());
            pool[slot] = child;
        }
    }
    assert!(
        accepted >= min_accepted,
        "{target}: only {accepted} of {rounds} mutants were accepted by a parser"
    );
}

#[test]
fn randomized_range_headers_keep_their_properties() {
    run("ranges", 50_000, 1_500, properties::ranges_input);
}

#[test]
fn randomized_names_and_routes_keep_their_properties() {
    run("names", 20_000, 2_000, properties::names_input);
}

#[test]
fn randomized_image_references_keep_their_properties() {
    run("image", 20_000, 2_000, properties::image_input);
}

#[test]
fn randomized_manifests_keep_their_properties() {
    run("manifest", 10_000, 200, properties::manifest_input);
}
