//! Short text from every rank to every rank: where each rank ran (host, device, GPU).

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// Fixed width of one rank's entry on the wire.
const WIDTH: usize = 256;

/// `text` from every rank (index = rank), truncated to 256 bytes.
pub fn gather_strings(world: &SimpleCommunicator, text: &str) -> Vec<String> {
    let mut mine = [0u8; WIDTH];
    let bytes = text.as_bytes();
    let len = bytes.len().min(WIDTH);
    mine[..len].copy_from_slice(&bytes[..len]);
    let mut all = vec![0u8; WIDTH * world.size() as usize];
    world.all_gather_into(&mine[..], &mut all[..]);
    all.chunks(WIDTH)
        .map(|entry| {
            let end = entry.iter().position(|&b| b == 0).unwrap_or(WIDTH);
            String::from_utf8_lossy(&entry[..end]).into_owned()
        })
        .collect()
}
