//! Two names PREFIX + 16 hex digits whose FNV-1a 64 hashes are equal, as `prometheus` 0.13 hashed a series'
//! label values (its `fnv` crate): tests/exporter_series_identity.rs names two domains so. A parallel
//! collision search with distinguished points (van Oorschot and Wiener): random walks x -> fnv(PREFIX + hex(x))
//! end at a value with its low 22 bits clear; two walks from different starts that end alike are walked again,
//! aligned, to where their values first agree. About 2^32.5 hashes: half a minute on two cores.
//!
//!   rustc -O -o /tmp/fnv-collide scripts/fnv-collide.rs && /tmp/fnv-collide bjt-
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;
const HEX: &[u8; 16] = b"0123456789abcdef";
const DISTINGUISHED: u64 = (1 << 22) - 1;
const WALKS: usize = 4;

fn fnv(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// One step: the hash of PREFIX (its state given) followed by `x` in 16 hex digits.
fn step(prefix: u64, x: u64) -> u64 {
    (0..16).rev().fold(prefix, |h, i| (h ^ u64::from(HEX[((x >> (i * 4)) & 15) as usize])).wrapping_mul(PRIME))
}

fn main() {
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "bjt-".into());
    let p = fnv(BASIS, prefix.as_bytes());
    let ends: Arc<Mutex<HashMap<u64, (u64, u64)>>> = Arc::default();
    let found: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (1..=2u64)
        .map(|t| {
            let (ends, found, done) = (ends.clone(), found.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t);
                let mut random = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                // Several walks at once: each step waits on a multiply, and they interleave.
                let mut start = [0u64; WALKS].map(|_| random());
                let (mut x, mut n) = (start, [0u64; WALKS]);
                while !done.load(Ordering::Relaxed) {
                    for i in 0..WALKS {
                        x[i] = step(p, x[i]);
                        n[i] += 1;
                        let lost = n[i] > 40 * (DISTINGUISHED + 1);
                        if x[i] & DISTINGUISHED != 0 && !lost {
                            continue;
                        }
                        if !lost {
                            let mut ends = ends.lock().unwrap();
                            match ends.get(&x[i]) {
                                Some(&(other, m)) if other != start[i] => {
                                    let (mut a, mut b, mut na) = (start[i], other, n[i]);
                                    let mut nb = m;
                                    while na > nb {
                                        a = step(p, a);
                                        na -= 1;
                                    }
                                    while nb > na {
                                        b = step(p, b);
                                        nb -= 1;
                                    }
                                    if a != b {
                                        while step(p, a) != step(p, b) {
                                            (a, b) = (step(p, a), step(p, b));
                                        }
                                        *found.lock().unwrap() = Some((a, b));
                                        done.store(true, Ordering::Relaxed);
                                    }
                                }
                                Some(_) => {}
                                None => {
                                    ends.insert(x[i], (start[i], n[i]));
                                }
                            }
                        }
                        start[i] = random();
                        (x[i], n[i]) = (start[i], 0);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (a, b) = found.lock().unwrap().expect("a collision");
    let (a, b) = (format!("{prefix}{a:016x}"), format!("{prefix}{b:016x}"));
    let (ha, hb) = (fnv(BASIS, a.as_bytes()), fnv(BASIS, b.as_bytes()));
    assert_eq!(ha, hb);
    println!("{a} {b} {ha:016x}");
}
