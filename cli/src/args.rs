//! Parsers for the values users type on the command line.

pub use jitsu_spec::units::parse_duration;
