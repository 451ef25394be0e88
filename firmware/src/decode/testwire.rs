//! Test-only builders of IPFIX messages and sets, shared by the decoder's unit tests.

/// An IPFIX message (domain 42, sequence 7) holding `sets`.
pub fn msg(sets: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![0, 10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 42];
    for s in sets {
        m.extend_from_slice(s);
    }
    let len = m.len() as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

/// A set with id `id` around `body`.
pub fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut s = id.to_be_bytes().to_vec();
    s.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    s.extend_from_slice(body);
    s
}
