//! HTTP pieces that every part of drowsy shares: the field rules of both
//! HTTP paths and of forward auth.

pub mod fields;
