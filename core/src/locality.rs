//! Locality (`region/zone/subzone`) of endpoints.

use std::fmt;

use serde::Serialize;

use crate::name::{self, NameError};

/// A validated locality: a zone needs a region, a subzone needs a zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    region: String,
    zone: Option<String>,
    subzone: Option<String>,
}

/// Why a locality was refused. Maistra drops such a locality silently; meshfed rejects it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalityError {
    #[error("zone {0:?} is set without a region")]
    ZoneWithoutRegion(String),
    #[error("subzone {0:?} is set without a zone")]
    SubzoneWithoutZone(String),
    #[error("{part}: {source}")]
    Invalid {
        part: &'static str,
        source: NameError,
    },
}

impl LocalityError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ZoneWithoutRegion(_) => "ZoneWithoutRegion",
            Self::SubzoneWithoutZone(_) => "SubzoneWithoutZone",
            Self::Invalid { .. } => "InvalidLocality",
        }
    }

    /// The field below `locality` the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::ZoneWithoutRegion(_) => "zone",
            Self::SubzoneWithoutZone(_) => "subzone",
            Self::Invalid { part, .. } => part,
        }
    }
}

fn part(what: &'static str, v: Option<&str>) -> Result<Option<String>, LocalityError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => {
            // Localities are label values (topology.kubernetes.io/region etc.), without '/'.
            name::label_value(s).map_err(|source| LocalityError::Invalid { part: what, source })?;
            Ok(Some(s.to_owned()))
        }
    }
}

impl Locality {
    /// Priority of an endpoint at `self` for a caller at `from`, 0 first: same subzone, same
    /// zone, same region, anywhere else (Istio's locality failover order).
    pub fn priority_from(&self, from: &Locality) -> u8 {
        match (
            self.region == from.region,
            self.zone == from.zone,
            self.subzone == from.subzone,
        ) {
            (true, true, true) => 0,
            (true, true, false) => 1,
            (true, false, _) => 2,
            (false, _, _) => 3,
        }
    }

    /// Builds a locality from optional parts; all empty gives `Ok(None)`.
    pub fn new(
        region: Option<&str>,
        zone: Option<&str>,
        subzone: Option<&str>,
    ) -> Result<Option<Self>, LocalityError> {
        let region = part("region", region)?;
        let zone = part("zone", zone)?;
        let subzone = part("subzone", subzone)?;
        match (region, zone, subzone) {
            (None, None, None) => Ok(None),
            (None, Some(z), _) => Err(LocalityError::ZoneWithoutRegion(z)),
            (None, None, Some(s)) | (Some(_), None, Some(s)) => {
                Err(LocalityError::SubzoneWithoutZone(s))
            }
            (Some(region), zone, subzone) => Ok(Some(Self {
                region,
                zone,
                subzone,
            })),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    pub fn subzone(&self) -> Option<&str> {
        self.subzone.as_deref()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if let Some(z) = &self.zone {
            write!(f, "/{z}")?;
        }
        if let Some(s) = &self.subzone {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

impl Serialize for Locality {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations() {
        assert_eq!(Locality::new(None, None, None).unwrap(), None);
        let l = Locality::new(Some("eu"), Some("eu-1a"), None)
            .unwrap()
            .unwrap();
        assert_eq!(l.to_string(), "eu/eu-1a");
        assert_eq!(
            Locality::new(None, Some("z"), None).unwrap_err().reason(),
            "ZoneWithoutRegion"
        );
        assert_eq!(
            Locality::new(Some("r"), None, Some("s"))
                .unwrap_err()
                .reason(),
            "SubzoneWithoutZone"
        );
        assert_eq!(
            Locality::new(Some("a/b"), None, None).unwrap_err().reason(),
            "InvalidLocality"
        );
    }
}
