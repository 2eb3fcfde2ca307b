//! Lookup of external ids (item and customer ids) by position, without a second copy of the ids.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Maps an external id to its position in an id list. The table holds positions only and a
/// lookup compares against the list itself, so the ids are stored once (a map keyed by `String`
/// would copy each: at a million customers, tens of MiB and a million allocations per load).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdIndex {
    table: HashTable<u32>,
    state: RandomState,
}

impl IdIndex {
    /// The index of `ids`; an id listed twice maps to its last position.
    pub(crate) fn new(ids: &[String]) -> Self {
        let state = RandomState::new();
        let mut table = HashTable::with_capacity(ids.len());
        let rehash = |&j: &u32| state.hash_one(ids[j as usize].as_str());
        for (i, id) in ids.iter().enumerate() {
            match table.entry(state.hash_one(id.as_str()), |&j: &u32| ids[j as usize] == *id, rehash) {
                Entry::Occupied(mut e) => *e.get_mut() = i as u32,
                Entry::Vacant(e) => {
                    e.insert(i as u32);
                }
            }
        }
        IdIndex { table, state }
    }

    /// The position of `id` in `ids` (the list this index was built on).
    pub(crate) fn get(&self, ids: &[String], id: &str) -> Option<u32> {
        self.table.find(self.state.hash_one(id), |&j| ids[j as usize] == id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::IdIndex;

    #[test]
    fn ids_are_found_at_their_position_and_others_are_not() {
        let ids: Vec<String> = ["a", "b", "ç", "", "b"].iter().map(|s| s.to_string()).collect();
        let index = IdIndex::new(&ids);
        assert_eq!(index.get(&ids, "a"), Some(0));
        assert_eq!(index.get(&ids, "ç"), Some(2));
        assert_eq!(index.get(&ids, ""), Some(3));
        assert_eq!(index.get(&ids, "b"), Some(4), "a repeated id maps to its last position, as a map built in order");
        assert_eq!(index.get(&ids, "c"), None);
        let many: Vec<String> = (0..10_000).map(|i| format!("id{i}")).collect();
        let index = IdIndex::new(&many);
        assert!((0..10_000).all(|i| index.get(&many, &format!("id{i}")) == Some(i)));
        assert_eq!(index.get(&many, "id10000"), None);
    }
}
