//! Tables that give their memory back. A hash table or queue keeps the
//! capacity of the most it ever held, so a worker that once synced 100,000
//! objects would keep tables sized for them after they are deleted. The
//! tables a worker fills per object shrink once three quarters of their
//! room is empty, down to twice what they hold: shrinking at a quarter and
//! doubling when full keeps the cost of resizing constant per insert or
//! removal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Below this capacity a table is not worth shrinking.
const SMALLEST: usize = 64;

/// A table whose capacity can be cut down to what it holds.
pub trait Shrink {
    /// Entries held.
    fn held(&self) -> usize;
    /// Entries there is room for.
    fn room(&self) -> usize;
    /// Cuts the room down to no less than `room`.
    fn shrink_room(&mut self, room: usize);

    /// Cuts the table's room to twice what it holds once less than a
    /// quarter of it is used; call after removing.
    fn shrink_when_sparse(&mut self) {
        let (held, room) = (self.held(), self.room());
        if room > SMALLEST && held.saturating_mul(4) < room {
            self.shrink_room(held.saturating_mul(2));
        }
    }
}

/// Implements [`Shrink`] for a std collection with `len`, `capacity` and
/// `shrink_to`.
macro_rules! shrink_by_capacity {
    ($($generics:tt)*) => {
        impl $($generics)* {
            fn held(&self) -> usize {
                self.len()
            }
            fn room(&self) -> usize {
                self.capacity()
            }
            fn shrink_room(&mut self, room: usize) {
                self.shrink_to(room);
            }
        }
    };
}

shrink_by_capacity!(<K: Eq + Hash, V> Shrink for HashMap<K, V>);
shrink_by_capacity!(<K: Eq + Hash> Shrink for HashSet<K>);
shrink_by_capacity!(<T> Shrink for VecDeque<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_table_gives_its_room_back_and_a_full_one_keeps_it() {
        let mut table: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = table.capacity();
        assert!(full >= 10_000);
        table.shrink_when_sparse();
        assert_eq!(table.capacity(), full, "a full table keeps its room");

        for i in 0..10_000 {
            table.remove(&i);
            table.shrink_when_sparse();
            assert!(
                table.capacity() <= SMALLEST.max(table.len() * 5),
                "{} held in room for {}",
                table.len(),
                table.capacity()
            );
        }
        assert!(table.capacity() <= SMALLEST, "{}", table.capacity());
    }

    #[test]
    fn a_queue_shrinks_as_it_drains() {
        let mut queue: VecDeque<u32> = (0..10_000).collect();
        while queue.pop_front().is_some() {
            queue.shrink_when_sparse();
        }
        assert!(queue.capacity() <= SMALLEST, "{}", queue.capacity());
    }
}
