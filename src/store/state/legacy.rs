//! The state as older nodes mirrored it in sled: one tree per kind of
//! entry (`sm_jtis`, `sm_subjects`, ...), one key per revocation, written
//! with every applied batch. Read once when such a data directory is
//! opened, then turned into a snapshot and cleared (see
//! [`StateMachine::load`](crate::store::StateMachine)).

use std::collections::BTreeMap;

use super::{cluster_id_from, State};
use crate::store::chunk;
use crate::store::db::{self, Db};
use crate::store::StoreError;

// Keys of the meta and policy trees.
const K_LAST_APPLIED: &str = "last_applied";
const K_LAST_MEMBERSHIP: &str = "last_membership";
const K_KEYS_VERSION: &str = "keys_version";
const K_CLUSTER_ID: &str = "cluster_id";
const K_POLICY: &str = "current";

fn trees(db: &Db) -> [&sled::Tree; 6] {
    [
        &db.sm_meta,
        &db.sm_jtis,
        &db.sm_subjects,
        &db.sm_clients,
        &db.sm_keys,
        &db.sm_policy,
    ]
}

/// Whether any of the old state trees holds anything.
pub(crate) fn present(db: &Db) -> bool {
    trees(db).iter().any(|t| !t.is_empty())
}

/// Loads the state the old trees hold. Blocking.
pub(crate) fn load(db: &Db) -> Result<State, StoreError> {
    let mut st = State {
        last_applied: db::get(&db.sm_meta, db::T_SM_META, K_LAST_APPLIED)?.flatten(),
        last_membership: db::get(&db.sm_meta, db::T_SM_META, K_LAST_MEMBERSHIP)?
            .unwrap_or_default(),
        keys_version: db::get(&db.sm_meta, db::T_SM_META, K_KEYS_VERSION)?.unwrap_or(0),
        subjects: load_map(&db.sm_subjects, db::T_SM_SUBJECTS)?,
        clients: load_map(&db.sm_clients, db::T_SM_CLIENTS)?,
        keys: load_map(&db.sm_keys, db::T_SM_KEYS)?,
        policy: chunk::get(&db.sm_policy, db::T_SM_POLICY, K_POLICY.as_bytes())?
            .map(|bytes| db::decode(db::T_SM_POLICY, &bytes))
            .transpose()?,
        cluster_id: db::get(&db.sm_meta, db::T_SM_META, K_CLUSTER_ID)?.unwrap_or_default(),
        ..Default::default()
    };
    for (jti, until) in load_map::<u64>(&db.sm_jtis, db::T_SM_JTIS)? {
        st.jtis.raise(&jti, until);
    }
    if st.cluster_id.is_empty() {
        // State written before cluster ids: the oldest key stands in for
        // the first one (every node holds the same keys).
        if let Some(first) = st
            .keys
            .values()
            .min_by_key(|k| (k.created_at, k.kid.clone()))
        {
            st.cluster_id = cluster_id_from(&first.kid);
        }
    }
    Ok(st)
}

/// Empties the old trees (not durable on its own). Blocking.
pub(crate) fn clear(db: &Db) -> Result<(), StoreError> {
    for t in trees(db) {
        t.clear()?;
    }
    Ok(())
}

fn load_map<V: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<BTreeMap<String, V>, StoreError> {
    let mut map = BTreeMap::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        let k = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
            tree: name,
            reason: "key is not UTF-8".into(),
        })?;
        map.insert(k, db::decode(name, &v)?);
    }
    Ok(map)
}

/// Writes `state` into the old trees as an older node would have (tests
/// of the migration). Blocking.
#[cfg(test)]
pub(crate) fn write(db: &Db, state: &State) -> Result<(), StoreError> {
    for (jti, until) in state.jtis.iter() {
        db.sm_jtis.insert(jti.as_bytes(), db::encode(&until)?)?;
    }
    for (k, v) in &state.subjects {
        db.sm_subjects.insert(k.as_bytes(), db::encode(v)?)?;
    }
    for (k, v) in &state.clients {
        db.sm_clients.insert(k.as_bytes(), db::encode(v)?)?;
    }
    for (k, v) in &state.keys {
        db.sm_keys.insert(k.as_bytes(), db::encode(v)?)?;
    }
    if let Some(p) = &state.policy {
        let mut b = sled::Batch::default();
        chunk::put(&mut b, K_POLICY.as_bytes(), &db::encode(p)?, 0);
        db.sm_policy.apply_batch(b)?;
    }
    db.sm_meta
        .insert(K_LAST_APPLIED, db::encode(&state.last_applied)?)?;
    db.sm_meta
        .insert(K_LAST_MEMBERSHIP, db::encode(&state.last_membership)?)?;
    db.sm_meta
        .insert(K_KEYS_VERSION, db::encode(&state.keys_version)?)?;
    db.sm_meta
        .insert(K_CLUSTER_ID, db::encode(&state.cluster_id)?)?;
    db.durable_flush()
}
