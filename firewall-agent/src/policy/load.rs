//! The entry points from text: a YAML stream parsed into a [`Validated`] set
//! ([`parse`]: decode, then validate), and straight on to a [`CompiledPolicy`]
//! ([`load_str`]).

use super::compile::compile;
use super::compiled::CompiledPolicy;
use super::decode;
use super::issue::PolicyError;
use super::validate::{Validated, validate_with};

/// Parses and validates a multi-document YAML stream of `Zone`, `ZonePolicy`,
/// `Namespace`, `Pod`, `Service`, `Node` and `List` objects.
pub fn parse(yaml: &str) -> Result<Validated, PolicyError> {
    let (set, issues, broken_zones) = decode::decode(yaml);
    // Objects that failed to decode are not in `set`; references to a broken zone would
    // only repeat its error as "unknown zone", so the validator is told their names.
    Ok(validate_with(set, issues, &broken_zones)?)
}

/// [`parse`] then [`compile`].
pub fn load_str(yaml: &str) -> Result<CompiledPolicy, PolicyError> {
    Ok(compile(&parse(yaml)?))
}
