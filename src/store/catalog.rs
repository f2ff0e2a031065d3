//! The catalog: the slow-moving data an engine keeps (brands, their secrets, pixel definitions, brand API
//! keys), apart from the hot queues, so one engine can serve queues while another keeps the catalog.
//!
//! An engine only stores and reads it. Every decision (a brand's secrets are made with it, a definition id
//! is taken once, a rename keeps the rest of the settings) is the ledger's ([`crate::ledger`]), which
//! writes through [`Catalog::apply`]: typed writes guarded by what the ledger read. When another writer
//! (another request, another hub process) changed an entry in between, nothing is written and the ledger
//! reads again and decides again. So two concurrent `PATCH`es of one brand both land, in some order,
//! and two processes on one database can never half-write a brand.

use async_trait::async_trait;

use super::StoreError;
use crate::api_key::ApiKeyRecord;
use crate::attribution::ParamsSeen;
use crate::brand::{Brand, BrandSecret, SecretKind};
use crate::definition::Definition;
use crate::ids::{BrandId, DefinitionId};

/// One catalog entry's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A brand's settings.
    Brand(BrandId),
    /// One of a brand's secrets.
    Secret(BrandId, SecretKind),
    /// One of a brand's pixel definitions.
    Definition(BrandId, DefinitionId),
    /// A brand API key, by its public id (unique across brands).
    ApiKey(String),
    /// The parameter names a brand has seen ([`crate::attribution::ParamsSeen`]).
    ParamsSeen(BrandId),
}

/// One entry's value, or its absence.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No such entry.
    Absent,
    /// A brand (boxed: it is by far the largest value).
    Brand(Box<Brand>),
    /// A secret.
    Secret(BrandSecret),
    /// A definition.
    Definition(Box<Definition>),
    /// An API key record.
    ApiKey(ApiKeyRecord),
    /// A brand's parameter tally.
    ParamsSeen(ParamsSeen),
}

/// A guarded change: `writes` apply, all together, only if every entry of `expect` still holds the value
/// the ledger read (compared whole; [`Value::Absent`] for "does not exist").
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// What must not have changed since it was read.
    pub expect: Vec<(Entry, Value)>,
    /// What to store: [`Value::Absent`] deletes the entry.
    pub writes: Vec<(Entry, Value)>,
}

impl Change {
    /// Adds the condition that `entry` still reads `value`.
    pub fn expect(mut self, entry: Entry, value: Value) -> Self {
        self.expect.push((entry, value));
        self
    }

    /// Adds a write.
    pub fn write(mut self, entry: Entry, value: Value) -> Self {
        self.writes.push((entry, value));
        self
    }

    /// Refuses a change that pairs an entry with a value of another kind: a bug of the caller, caught
    /// by every engine before anything is written.
    pub fn check(&self) -> Result<(), StoreError> {
        let mismatched = self
            .expect
            .iter()
            .chain(&self.writes)
            .any(|(entry, value)| !entry.holds(value));
        if mismatched {
            return Err(StoreError::corrupt(
                "a catalog change pairs an entry with a value of another kind",
            ));
        }
        Ok(())
    }
}

/// What [`Catalog::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every write is durable.
    Done,
    /// An expected entry had changed: nothing was written.
    Conflict,
}

/// The catalog half of an engine. Reads answer from whatever is durable or about to be (a write not yet
/// flushed may be seen); writes are durable when [`Catalog::apply`] returns.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Reads one entry.
    async fn read(&self, entry: &Entry) -> Result<Value, StoreError>;

    /// The brand's definitions, in id order.
    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError>;

    /// The brand's API keys, in no particular order.
    async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Applies `change` atomically: every write or none, none when an expectation fails. Durable when
    /// it returns [`Applied::Done`]. Entries of one change may belong to several brands.
    async fn apply(&self, change: Change) -> Result<Applied, StoreError>;
}

impl Entry {
    /// Whether `value` is of the kind this entry holds (or absent); an engine refuses a write that mixes
    /// them, which would be a bug of the ledger.
    pub fn holds(&self, value: &Value) -> bool {
        matches!(
            (self, value),
            (_, Value::Absent)
                | (Entry::Brand(_), Value::Brand(_))
                | (Entry::Secret(..), Value::Secret(_))
                | (Entry::Definition(..), Value::Definition(_))
                | (Entry::ApiKey(_), Value::ApiKey(_))
                | (Entry::ParamsSeen(_), Value::ParamsSeen(_))
        )
    }
}
