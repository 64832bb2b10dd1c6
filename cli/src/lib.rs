//! The `intattention` command-line tool (ported next).
