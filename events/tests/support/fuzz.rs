//! What the proptest fuzzers of the record decoder (`events/tests/fuzz_codec.rs`) and the
//! segment reader (`tests/fuzz_segments.rs`, which includes this file by path) share:
//! byte-level mutations, and reading a corpus folder.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// The files of a corpus or regression folder (not its README), sorted by name, with their
/// bytes; none when the folder does not exist.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "md"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// One change to a byte string.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    Flip { at: usize, bit: u8 },
    /// Set one byte.
    Set { at: usize, value: u8 },
    /// Cut the end off.
    Truncate { len: usize },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Remove up to `n` bytes.
    Remove { at: usize, n: usize },
    /// Overwrite 4 bytes with a big-endian length-like value.
    Length { at: usize, value: u32 },
    /// Add bytes at the end.
    Append { bytes: Vec<u8> },
}

/// Mutations removing fewer than `remove_max` bytes, writing one of `lengths` (or, as often
/// as any one of them, any `u32`) as a length word, and with `append`, appending bytes.
/// Positions are taken modulo the input's length when applied.
pub fn mutations(
    remove_max: usize,
    lengths: &'static [u32],
    append: bool,
) -> BoxedStrategy<Mutation> {
    let length = prop_oneof![
        lengths.len() as u32 => proptest::sample::select(lengths),
        1 => any::<u32>(),
    ];
    let mut arms: Vec<BoxedStrategy<Mutation>> = vec![
        (any::<usize>(), 0u8..8)
            .prop_map(|(at, bit)| Mutation::Flip { at, bit })
            .boxed(),
        (any::<usize>(), any::<u8>())
            .prop_map(|(at, value)| Mutation::Set { at, value })
            .boxed(),
        any::<usize>()
            .prop_map(|len| Mutation::Truncate { len })
            .boxed(),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16),
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes })
            .boxed(),
        (any::<usize>(), 1usize..remove_max)
            .prop_map(|(at, n)| Mutation::Remove { at, n })
            .boxed(),
        (any::<usize>(), length)
            .prop_map(|(at, value)| Mutation::Length { at, value })
            .boxed(),
    ];
    if append {
        arms.push(
            proptest::collection::vec(any::<u8>(), 1..64)
                .prop_map(|bytes| Mutation::Append { bytes })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

/// Applies `m` to `bytes`.
pub fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Set { at, value } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b = *value;
            }
        }
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Insert { at, bytes: ins } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, ins.iter().copied());
        }
        Mutation::Remove { at, n: k } => {
            let at = at % n;
            let end = (at + k).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Length { at, value } => {
            if bytes.len() >= 4 {
                let at = at % (bytes.len() - 3);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::Append { bytes: more } => bytes.extend_from_slice(more),
    }
}
