//! `compare.descriptor_set` (SPEC §8): the protobuf schema gRPC answers are compared with. In a
//! config file it is a file path (relative to the file's directory); in etcd a name, the value
//! under `<prefix>/descriptors/<name>` being the base64 of a `FileDescriptorSet` as
//! `protoc --include_imports --descriptor_set_out` writes it.
//!
//! The config sources read the bytes and attach the decoded set to the route's spec
//! ([`RouteSpec::with_descriptors`]); this module only decodes (no I/O).

use std::hash::{Hash, Hasher};

use prost_reflect::{DescriptorPool, MessageDescriptor};

use crate::RouteSpec;

/// A decoded `FileDescriptorSet` and the name it was given by.
#[derive(Clone)]
pub struct DescriptorSet {
    name: String,
    /// Of the bytes it was decoded from: two sets are the same when name and digest are.
    digest: u64,
    pool: DescriptorPool,
}

impl DescriptorSet {
    /// Decode `bytes`; the error says what is wrong and how such a file is made.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<DescriptorSet, String> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| {
            format!(
                "{name:?} is not a FileDescriptorSet (make one with protoc --include_imports \
                 --descriptor_set_out): {e}"
            )
        })?;
        if pool.services().len() == 0 {
            return Err(format!(
                "{name:?} describes no service: the answers of which method would it decode?"
            ));
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        Ok(DescriptorSet {
            name: name.to_owned(),
            digest: hasher.finish(),
            pool,
        })
    }

    /// The name it was given by: the file path as written, or the etcd name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The answer message of the gRPC method at `path` (`/package.Service/Method`).
    pub fn output_of(&self, path: &str) -> Option<MessageDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let service = self.pool.get_service_by_name(service)?;
        let method = service.methods().find(|m| m.name() == method)?;
        Some(method.output())
    }
}

impl PartialEq for DescriptorSet {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.digest == other.digest
    }
}

impl std::fmt::Debug for DescriptorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DescriptorSet")
            .field("name", &self.name)
            .field("digest", &format_args!("{:016x}", self.digest))
            .finish()
    }
}

impl RouteSpec {
    /// The `compare.descriptor_set` this spec names, which its source must resolve.
    pub fn descriptor_set_name(&self) -> Option<&str> {
        self.compare.descriptor_set.as_deref()
    }

    /// This spec with its descriptor set resolved.
    pub fn with_descriptors(mut self, set: DescriptorSet) -> RouteSpec {
        self.compare.descriptors = Some(set);
        self
    }
}
