//! Label tables (`labels.json`: `{"value": "name"}`), read beside label maps
//! and written beside outputs.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Label value → organ name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelTable(pub BTreeMap<u16, String>);

impl LabelTable {
    /// Parse `{"1": "liver", ...}`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
            Error::InvalidArgument(format!(
                "label table is not a JSON object of \"value\": \"name\" ({e})"
            ))
        })?;
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            let value: u16 = k.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "label table key {k:?} is not a label value (0-65535)"
                ))
            })?;
            map.insert(value, v);
        }
        Ok(Self(map))
    }

    /// As pretty JSON with string keys in numeric order.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{\n");
        let n = self.0.len();
        for (t, (k, v)) in self.0.iter().enumerate() {
            s.push_str(&format!(
                "  \"{k}\": {}{}\n",
                serde_json::to_string(v).unwrap(),
                if t + 1 < n { "," } else { "" }
            ));
        }
        s.push('}');
        s.push('\n');
        s
    }

    /// The name of a label, or its number as text.
    pub fn name(&self, label: u16) -> String {
        self.0
            .get(&label)
            .cloned()
            .unwrap_or_else(|| format!("label_{label}"))
    }

    /// Find the table beside a label file: `<case>.labels.json`, then `labels.json` in its folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn find_beside(label_path: &std::path::Path) -> Option<Self> {
        let name = label_path.file_name()?.to_string_lossy().to_string();
        let stem = name.split('.').next()?;
        let dir = label_path.parent()?;
        [
            dir.join(format!("{stem}.labels.json")),
            dir.join("labels.json"),
        ]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| Self::from_json(&t).ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_errors() {
        let t = LabelTable::from_json("{\"10\": \"lung\", \"2\": \"kidney \\\"R\\\"\"}").unwrap();
        assert_eq!(t.name(2), "kidney \"R\"");
        assert_eq!(t.name(3), "label_3");
        let back = LabelTable::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!(t.to_json().find("\"2\"").unwrap() < t.to_json().find("\"10\"").unwrap());
        assert!(
            LabelTable::from_json("{\"x\": \"a\"}")
                .unwrap_err()
                .to_string()
                .contains("not a label value")
        );
        assert!(LabelTable::from_json("[1]").is_err());
    }
}
