//! Memory the engine works in: [`AlignedVec`], buffers whose first element starts a 64-byte
//! cache line, and [`Fresh`] parts, which let parallel workers zero and write disjoint pieces of
//! one output exactly once. Nothing here is global: every buffer belongs to a caller's
//! [`crate::Workspace`], [`crate::KvCache`] or the call that made it.

mod aligned;
mod fresh;

pub(crate) use aligned::AlignedVec;
pub(crate) use fresh::{built_in, vec_built_by, Fresh};

/// Plain numbers: every bit pattern (in particular all zeros) is a valid value and there is
/// no padding ([`bytemuck::Pod`]), with an alignment that divides 64.
pub(crate) trait Pod: bytemuck::Pod + Send + Sync {}

impl Pod for i8 {}
impl Pod for u8 {}
impl Pod for i32 {}
impl Pod for u32 {}
impl Pod for i64 {}
impl Pod for f32 {}
impl Pod for half::f16 {}
