//! The raw bindings to `wrapper/intattention_acl.h`, generated at build time by
//! `build/shim.rs`, and the one place where a shim status becomes an [`Error`].

#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]
#![allow(clippy::all)]

use std::ffi::CStr;

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/intattention_acl_bindings.rs"));

/// Turns a shim status into a `Result`, with the shim's (usually ACL's) message.
pub(crate) fn check(status: ia_status) -> Result<()> {
    if status == IA_OK {
        return Ok(());
    }
    // SAFETY: ia_last_error returns a NUL-terminated string owned by this thread's shim state,
    // valid until this thread's next shim call; it is copied before any other call.
    let msg = unsafe { CStr::from_ptr(ia_last_error()) }
        .to_string_lossy()
        .into_owned();
    let kind = match status {
        IA_INVALID_ARGUMENT => "invalid argument",
        IA_VALIDATION_FAILED => "validation failed",
        IA_EXCEPTION => "exception",
        IA_OUT_OF_MEMORY => "out of memory",
        IA_BAD_STATE => "bad state",
        _ => "unknown status",
    };
    Err(Error::Acl(format!("{msg} [{kind}]")))
}
