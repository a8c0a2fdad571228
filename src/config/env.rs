//! Every key of `shim.toml` can be set from the environment, for containers and systemd units
//! that configure by environment: `HOOKSHIM_<SECTION>__<KEY>[__<KEY>…]`, the path's parts
//! joined by two underscores, e.g. `HOOKSHIM_SERVER__LISTEN=0.0.0.0:8680`,
//! `HOOKSHIM_UPSTREAMS__JOBS__RATE__PER_SECOND=5`. A variable wins over the file.
//!
//! - Parts are matched without case; a part naming an existing key also matches with `_` for
//!   `-` (`HOOKSHIM_UPSTREAMS__OPENAI_BATCH__…` is `[upstreams.openai-batch]`). A new upstream
//!   name is taken lower-cased as written; a new header name lower-cased with `-` for `_`.
//! - The value is read as a TOML value when it is one (`5`, `true`, `["a", "b"]`,
//!   `{ per_second = 5 }`), else as a string (`0.0.0.0:8680`, `30s`); quote a string that would
//!   read as another type (`'"123"'`). An empty value is ignored.
//! - Only variables with `__` after the prefix are keys: `HOOKSHIM_API_TOKEN`,
//!   `HOOKSHIM_CALLBACK_SECRET`, `HOOKSHIM_LOG`, `HOOKSHIM_LOG_FORMAT` and `HOOKSHIM_CONFIG` keep
//!   their own meanings.

use toml::{Table, Value};

/// Variables whose names start with this and contain `__` set config keys.
pub const PREFIX: &str = "HOOKSHIM_";
/// Joins the parts of a key's path in a variable name.
pub const SEPARATOR: &str = "__";

/// One variable applied to the config: which variable, and the dotted key it set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub var: String,
    pub key: String,
}

/// The variables among `vars` that set config keys, sorted by name (a whole table before the
/// keys below it).
pub fn config_vars(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .filter(|(k, v)| {
            k.strip_prefix(PREFIX)
                .is_some_and(|rest| rest.contains(SEPARATOR))
                && !v.trim().is_empty()
        })
        .collect();
    out.sort();
    out
}

/// A variable's value as a TOML value: itself when it parses as one (a date-time is kept as
/// text, as the config writes times as strings), else a string.
fn value_of(text: &str) -> Value {
    match toml::from_str::<Table>(&format!("v = {text}")) {
        Ok(mut t) => match t.remove("v") {
            Some(Value::Datetime(_)) | None => Value::String(text.to_string()),
            Some(v) => v,
        },
        Err(_) => Value::String(text.to_string()),
    }
}

/// The key in `table` that `part` names: an existing one matched without case and with `_`
/// for `-`, else `part` lower-cased (a header: also `_` → `-`).
fn key_for(table: &Table, part: &str, parent: Option<&str>) -> String {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let wanted = norm(part);
    if let Some(k) = table.keys().find(|k| norm(k) == wanted) {
        return k.clone();
    }
    match parent {
        Some("headers") => part.to_ascii_lowercase().replace('_', "-"),
        _ => part.to_ascii_lowercase(),
    }
}

/// Apply the variables `vars` (from [`config_vars`]) to the file's `table`; returns what each
/// set. A variable whose path runs through a value that is not a table is an error naming it.
pub fn apply(table: &mut Table, vars: &[(String, String)]) -> Result<Vec<Override>, String> {
    let mut applied = Vec::new();
    for (var, text) in vars {
        let rest = &var[PREFIX.len()..];
        let parts: Vec<&str> = rest.split(SEPARATOR).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "{var}: a config key from the environment is HOOKSHIM_<SECTION>__<KEY>, parts joined by two underscores (e.g. HOOKSHIM_SERVER__LISTEN); this name has an empty part"
            ));
        }
        let mut here: &mut Table = table;
        let mut path: Vec<String> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let key = key_for(here, part, path.last().map(String::as_str));
            path.push(key.clone());
            if i + 1 == parts.len() {
                here.insert(key, value_of(text));
                break;
            }
            let next = here
                .entry(key)
                .or_insert_with(|| Value::Table(Table::new()));
            here = match next {
                Value::Table(t) => t,
                other => {
                    return Err(format!(
                        "{var}: `{}` is a {}, not a table, so it has no key `{}`",
                        path.join("."),
                        other.type_str(),
                        parts[i + 1].to_ascii_lowercase()
                    ));
                }
            };
        }
        applied.push(Override {
            var: var.clone(),
            key: path.join("."),
        });
    }
    Ok(applied)
}

/// The dotted keys `table` sets (arrays and inline values are leaves).
pub fn keys_set(prefix: &str, table: &Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) if !t.is_empty() => keys_set(&key, t, out),
            _ => out.push(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        config_vars(list.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn variables_set_keys_at_any_depth_with_typed_values() {
        let mut t: Table = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.openai-batch]\npreset = \"openai-batch\"\nrate = { per_second = 10, burst = 10 }\nheaders = { X-Tenant = \"a\" }\n",
        )
        .unwrap();
        let applied = apply(
            &mut t,
            &vars(&[
                ("HOOKSHIM_SERVER__LISTEN", "0.0.0.0:8680"),
                ("HOOKSHIM_SERVER__MAX_CONNECTIONS", "10"),
                ("HOOKSHIM_UPSTREAMS__OPENAI_BATCH__RATE__BURST", "3"),
                ("HOOKSHIM_UPSTREAMS__OPENAI_BATCH__HEADERS__X_TENANT", "b"),
                (
                    "HOOKSHIM_UPSTREAMS__OPENAI_BATCH__HEADERS__X_API_KEY",
                    "${K}",
                ),
                ("HOOKSHIM_UPSTREAMS__NEW_ONE__PRESET", "replicate"),
                ("HOOKSHIM_CALLBACKS__ALLOWED_HOSTS", "[\"a\", \"b\"]"),
                (
                    "HOOKSHIM_CALLBACKS__PREVIOUS_SECRETS",
                    "[{ env = \"OLD\", until = 2026-12-31T00:00:00Z }]",
                ),
                (
                    "HOOKSHIM_UPSTREAMS__OPENAI_BATCH__WEBHOOK__PREVIOUS_SECRETS__X",
                    "1999-01-01T00:00:00Z",
                ),
                // Not config keys: no separator, or empty.
                ("HOOKSHIM_API_TOKEN", "t"),
                ("HOOKSHIM_STORE__PATH", " "),
            ]),
        );
        let applied = applied.unwrap();
        assert_eq!(t["server"]["listen"].as_str(), Some("0.0.0.0:8680"));
        assert_eq!(t["server"]["max_connections"].as_integer(), Some(10));
        let up = &t["upstreams"]["openai-batch"];
        assert_eq!(up["rate"]["burst"].as_integer(), Some(3));
        assert_eq!(up["rate"]["per_second"].as_integer(), Some(10));
        assert_eq!(up["headers"]["X-Tenant"].as_str(), Some("b"));
        assert_eq!(up["headers"]["x-api-key"].as_str(), Some("${K}"));
        assert_eq!(
            up["webhook"]["previous_secrets"]["x"].as_str(),
            Some("1999-01-01T00:00:00Z")
        );
        assert_eq!(
            t["upstreams"]["new_one"]["preset"].as_str(),
            Some("replicate")
        );
        assert_eq!(t["callbacks"]["allowed_hosts"].as_array().unwrap().len(), 2);
        // A date-time inside a TOML value stays a TOML date-time (written as in a file).
        assert!(t["callbacks"]["previous_secrets"][0]["until"].is_datetime());
        let keys: Vec<&str> = applied.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "callbacks.allowed_hosts",
                "callbacks.previous_secrets",
                "server.listen",
                "server.max_connections",
                "upstreams.new_one.preset",
                "upstreams.openai-batch.headers.x-api-key",
                "upstreams.openai-batch.headers.X-Tenant",
                "upstreams.openai-batch.rate.burst",
                "upstreams.openai-batch.webhook.previous_secrets.x",
            ]
        );
    }

    #[test]
    fn a_path_through_a_value_or_with_an_empty_part_is_an_error() {
        let mut t: Table = toml::from_str("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(
            apply(&mut t, &vars(&[("HOOKSHIM_SERVER__LISTEN__PORT", "1")])).unwrap_err(),
            "HOOKSHIM_SERVER__LISTEN__PORT: `server.listen` is a string, not a table, so it has no key `port`"
        );
        assert!(
            apply(&mut t, &vars(&[("HOOKSHIM_SERVER____LISTEN", "1")]))
                .unwrap_err()
                .contains("has an empty part")
        );
    }
}
