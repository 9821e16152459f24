//! `make test-breaks` (`series`) only: how the `prometheus` crate (0.13) took two series for one, so that the
//! guards of the exporter's series can be shown to bite. Apart from exposition.rs, which is mutated
//! (scripts/mutants.sh): this code runs only under the test-only switch, which no unit test sets.

/// Of the samples' `keys` (label values in sorted label order; `place` maps the caller's order to it), the
/// one `values` (in the caller's order) would have been taken for: the first whose values, joined in the
/// caller's order, have the same FNV-1a 64 hash (values that join alike, and any crafted pair).
pub fn taken_as_the_crate_took_it<'a>(
    keys: impl Iterator<Item = &'a Vec<String>>,
    place: &[usize],
    values: &[&str],
) -> Option<Vec<String>> {
    let fnv = |parts: &mut dyn Iterator<Item = &str>| {
        parts.flat_map(str::bytes).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let ours = fnv(&mut values.iter().copied());
    keys.into_iter()
        .find(|k| fnv(&mut place.iter().map(|&at| k[at].as_str())) == ours)
        .cloned()
}
