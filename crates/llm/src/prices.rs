//! Model prices, for the cost recorded with every usage event.

use crate::LlmError;
use std::collections::HashMap;

/// Prices per million tokens by model, parsed from the `prices` setting
/// (`model=input/output,...`, e.g. `gpt-4o-mini=0.15/0.6,text-embedding-3-small=0.02/0`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    prices: HashMap<String, ModelPrice>,
}

/// What one model costs, in currency units per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelPrice {
    /// Per million prompt (input) tokens.
    pub input_per_million: f64,
    /// Per million completion (output) tokens.
    pub output_per_million: f64,
}

impl PriceTable {
    /// Parses `model=input/output` entries separated by commas; whitespace around parts is
    /// ignored, the output price may be omitted (embedding models: `model=0.02`), and an empty
    /// string is an empty table. The model name is everything before the last `=`, so names
    /// like `org/model:tag` work.
    pub fn parse(spec: &str) -> Result<PriceTable, LlmError> {
        let mut prices = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| LlmError::InvalidConfig {
                setting: "prices",
                message: format!("entry {entry:?}: {why}"),
            };
            let (model, price) = entry
                .rsplit_once('=')
                .ok_or_else(|| bad("expected model=input/output"))?;
            let model = model.trim();
            if model.is_empty() {
                return Err(bad("the model name is empty"));
            }
            let number = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(&format!("{:?} is not a non-negative number", s.trim())))
            };
            let (input, output) = match price.split_once('/') {
                Some((i, o)) => (number(i)?, number(o)?),
                None => (number(price)?, 0.0),
            };
            if prices
                .insert(
                    model.to_owned(),
                    ModelPrice {
                        input_per_million: input,
                        output_per_million: output,
                    },
                )
                .is_some()
            {
                return Err(bad("the model is listed twice"));
            }
        }
        Ok(PriceTable { prices })
    }

    /// The table for an optional setting (none: every model costs 0).
    pub fn from_setting(spec: Option<&str>) -> Result<PriceTable, LlmError> {
        spec.map_or_else(|| Ok(PriceTable::default()), PriceTable::parse)
    }

    /// The price of `model`, if listed.
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        self.prices.get(model).copied()
    }

    /// The cost of one call; an unlisted model costs 0.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.get(model).map_or(0.0, |p| {
            (prompt_tokens as f64 * p.input_per_million + completion_tokens as f64 * p.output_per_million) / 1_000_000.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prices() {
        let t =
            PriceTable::parse(" gpt-4o-mini=0.15/0.6 , text-embedding-3-small=0.02, org/llama3:8b=1/2").expect("valid");
        assert!((t.cost("gpt-4o-mini", 1_000_000, 500_000) - 0.45).abs() < 1e-12);
        assert!((t.cost("text-embedding-3-small", 2_000_000, 0) - 0.04).abs() < 1e-12);
        assert!((t.cost("org/llama3:8b", 1000, 1000) - 0.003).abs() < 1e-12);
        assert_eq!(t.cost("unknown", 1_000_000, 1_000_000), 0.0);
        assert_eq!(PriceTable::parse("").expect("empty"), PriceTable::default());
        assert_eq!(PriceTable::from_setting(None).expect("none"), PriceTable::default());
    }

    #[test]
    fn rejects_malformed_entries_naming_them() {
        for bad in ["gpt", "=1/2", "m=x/1", "m=1/-2", "m=1/2,m=3/4", "m=NaN"] {
            let err = PriceTable::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("prices: entry"), "{err}");
        }
    }
}
