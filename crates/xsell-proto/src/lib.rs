//! Generated gRPC code for `proto/xsell.proto` (package `xsell.v1`), and its descriptor set for
//! server reflection. Generated code only: conversions live in `xsell-server`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `xsell.v1`.
pub mod v1 {
    tonic::include_proto!("xsell.v1");
}

/// Encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsell_descriptor.bin"));
