//! Response shapes: `SimplePublicObject` (and `…WithAssociations`) serialized straight from stored
//! records, without building intermediate JSON trees, so a 100-record page costs one pass.
//!
//! Invariant: property maps are emitted in name order and every value is a JSON string (or `null` for
//! a requested property without a value), as HubSpot sends them.

use super::schema::{self, ObjectType};
use super::store::{AccountData, Record};
use crate::clock::format_ms;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use std::collections::BTreeSet;

/// Which properties a response shows.
#[derive(Clone, Debug)]
pub enum PropSel {
    /// The names listed (unset ones as `null`), already merged with the always-returned ones.
    Names(Vec<&'static str>),
    /// Every property with a value (create/update responses).
    AllSet,
}

impl PropSel {
    /// The selection for a request's `properties` list (defaults when empty). Unknown names are
    /// ignored, as HubSpot does on reads.
    pub fn for_request(obj: ObjectType, requested: &[String]) -> Self {
        if requested.is_empty() {
            return PropSel::Names(obj.default_props().to_vec());
        }
        let mut set: BTreeSet<&'static str> = obj.always_props().into_iter().collect();
        for name in requested {
            if let Some(def) = schema::property(obj, name.trim()) {
                set.insert(def.name);
            }
        }
        PropSel::Names(set.into_iter().collect())
    }
}

/// Associations per target type: `(target type, [(id, association type id)])`.
pub type AssocLists = Vec<(ObjectType, Vec<(u64, u16)>)>;

/// One object in a response.
pub struct ObjView<'a> {
    /// Object type.
    pub obj: ObjectType,
    /// The record.
    pub rec: &'a Record,
    /// Property selection.
    pub props: &'a PropSel,
    /// Associations to show, per target type: `(target type, [(id, association type id)])`.
    pub assoc: Option<AssocLists>,
    /// `objectWriteTraceId` to echo (batch inputs).
    pub trace_id: Option<&'a str>,
    /// `new` flag of upsert results.
    pub is_new: Option<bool>,
}

impl<'a> ObjView<'a> {
    /// A plain view.
    pub fn new(obj: ObjectType, rec: &'a Record, props: &'a PropSel) -> Self {
        Self { obj, rec, props, assoc: None, trace_id: None, is_new: None }
    }

    /// Adds the associations of `rec` to the given types.
    pub fn with_assoc(mut self, data: &AccountData, to: &[ObjectType]) -> Self {
        if !to.is_empty() {
            let v = to
                .iter()
                .map(|t| (*t, data.associations(self.obj, self.rec.id, *t)))
                .filter(|(_, l)| !l.is_empty())
                .collect();
            self.assoc = Some(v);
        }
        self
    }
}

struct PropsView<'a>(&'a ObjView<'a>);

impl Serialize for PropsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        let mut m = s.serialize_map(None)?;
        match v.props {
            PropSel::Names(names) => {
                for n in names {
                    m.serialize_entry(n, &v.rec.get(v.obj, n))?;
                }
            }
            PropSel::AllSet => {
                let mut names: BTreeSet<&str> = v.rec.props.keys().copied().collect();
                names.extend(v.obj.always_props());
                for n in names {
                    m.serialize_entry(n, &v.rec.get(v.obj, n))?;
                }
            }
        }
        m.end()
    }
}

struct AssocList<'a>(&'a [(u64, u16)]);

struct AssocItem<'a>(&'a str, &'a str);

impl Serialize for AssocItem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("id", self.0)?;
        m.serialize_entry("type", self.1)?;
        m.end()
    }
}

struct AssocResults<'a>(&'a AssocList<'a>);

impl Serialize for AssocResults<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list = self.0;
        let mut seq = s.serialize_seq(Some(list.0.len()))?;
        for (id, type_id) in list.0 {
            let label = schema::assoc_type(*type_id).map(|t| t.label).unwrap_or("unknown");
            seq.serialize_element(&AssocItem(&id.to_string(), label))?;
        }
        seq.end()
    }
}

impl Serialize for AssocList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("results", &AssocResults(self))?;
        m.end()
    }
}

impl Serialize for ObjView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.rec.id.to_string())?;
        m.serialize_entry("properties", &PropsView(self))?;
        m.serialize_entry("createdAt", &self.rec.created_iso)?;
        m.serialize_entry("updatedAt", &self.rec.updated_iso)?;
        m.serialize_entry("archived", &self.rec.archived_at.is_some())?;
        if let Some(at) = self.rec.archived_at {
            m.serialize_entry("archivedAt", &format_ms(at))?;
        }
        if let Some(assoc) = &self.assoc
            && !assoc.is_empty()
        {
            let lists: Vec<(ObjectType, AssocList<'_>)> =
                assoc.iter().map(|(to, l)| (*to, AssocList(l))).collect();
            m.serialize_entry("associations", &AssocMap(&lists))?;
        }
        if let Some(t) = self.trace_id {
            m.serialize_entry("objectWriteTraceId", t)?;
        }
        if let Some(n) = self.is_new {
            m.serialize_entry("new", &n)?;
        }
        m.end()
    }
}

struct AssocMap<'a>(&'a [(ObjectType, AssocList<'a>)]);

impl Serialize for AssocMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (to, list) in self.0 {
            m.serialize_entry(to.name(), list)?;
        }
        m.end()
    }
}
