//! What the probe saw inside a container (its JSON, with typed accessors).

use crate::Outcome;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Probe(pub Value);

/// One mount as the probe saw it.
#[derive(Debug, Clone)]
pub struct Mount {
    pub mount_point: String,
    pub fstype: String,
    pub options: String,
}

impl Probe {
    /// The probe prints one JSON line last on stdout (a command before it may print more).
    pub fn parse(outcome: &Outcome) -> Result<Probe> {
        let line = outcome.stdout.lines().rev().find(|l| l.starts_with('{'));
        let line =
            line.ok_or_else(|| anyhow!("`{}`: no probe output\n{}", outcome.command, outcome.transcript()))?;
        Ok(Probe(serde_json::from_str(line).context("parse the probe's JSON")?))
    }

    fn field(&self, key: &str) -> Result<&Value> {
        self.0.get(key).ok_or_else(|| anyhow!("the probe's output has no {key:?}"))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.field(key)?.as_str().ok_or_else(|| anyhow!("probe: {key} is not a string"))
    }

    pub fn int(&self, key: &str) -> Result<i64> {
        self.field(key)?.as_i64().ok_or_else(|| anyhow!("probe: {key} is not a number"))
    }

    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        let list = self.field(key)?.as_array().ok_or_else(|| anyhow!("probe: {key} is not a list"))?;
        Ok(list.iter().filter_map(Value::as_i64).collect())
    }

    pub fn strs(&self, key: &str) -> Result<Vec<String>> {
        let list = self.field(key)?.as_array().ok_or_else(|| anyhow!("probe: {key} is not a list"))?;
        Ok(list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    }

    /// The inode of a namespace (`uts`, `pid`, ...), as /proc/self/ns shows it.
    pub fn ns(&self, name: &str) -> Result<u64> {
        self.field("ns")?[name].as_u64().ok_or_else(|| anyhow!("probe: no {name} namespace"))
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.0.get("env")?.get(key)?.as_str()
    }

    pub fn mounts(&self) -> Result<Vec<Mount>> {
        let list = self.field("mounts")?.as_array().ok_or_else(|| anyhow!("probe: mounts is not a list"))?;
        let text = |m: &Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
        Ok(list
            .iter()
            .map(|m| Mount {
                mount_point: text(m, "mount_point"),
                fstype: text(m, "fstype"),
                options: text(m, "options"),
            })
            .collect())
    }

    pub fn mount(&self, mount_point: &str) -> Result<Mount> {
        let found = self.mounts()?.into_iter().rev().find(|m| m.mount_point == mount_point);
        found.ok_or_else(|| anyhow!("nothing is mounted on {mount_point} inside the container"))
    }

    /// A capability set ("effective", "permitted", "bounding", "inheritable",
    /// "ambient"), as the bit mask that /proc/self/status shows in hex.
    pub fn caps(&self, set: &str) -> Result<u64> {
        let hex = self.field("capabilities")?[set]
            .as_str()
            .ok_or_else(|| anyhow!("probe: no {set} capability set"))?;
        u64::from_str_radix(hex, 16).with_context(|| format!("probe: the {set} set {hex:?} is not hex"))
    }

    /// The result of the probe's `index`-th action.
    pub fn action(&self, index: usize) -> Result<Action<'_>> {
        let actions =
            self.field("actions")?.as_array().ok_or_else(|| anyhow!("probe: actions is not a list"))?;
        actions.get(index).map(Action).ok_or_else(|| anyhow!("probe: no action {index}"))
    }
}

/// One action's result: `{"action", "arg", "ok", "errno", "error", "value"}`.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a>(pub &'a Value);

impl<'a> Action<'a> {
    pub fn ok(&self) -> bool {
        self.0["ok"].as_bool().unwrap_or(false)
    }

    pub fn errno(&self) -> Option<i64> {
        self.0["errno"].as_i64()
    }

    pub fn value(&self) -> &'a Value {
        &self.0["value"]
    }

    /// "ACTION ARG", as the probe's command line had it.
    pub fn name(&self) -> String {
        format!("{} {}", self.0["action"].as_str().unwrap_or("?"), self.0["arg"].as_str().unwrap_or(""))
    }

    /// Fails unless the action worked.
    pub fn expect_ok(&self) -> Result<&'a Value> {
        if !self.ok() {
            bail!("inside the container, `{}` failed: {}", self.name(), self.0["error"]);
        }
        Ok(self.value())
    }

    /// Fails unless the action failed with `errno`.
    pub fn expect_errno(&self, errno: i32) -> Result<()> {
        if self.errno() != Some(errno.into()) {
            let seen = if self.ok() { "it worked".to_string() } else { self.0["error"].to_string() };
            bail!("inside the container, `{}` should fail with errno {errno}; {seen}", self.name());
        }
        Ok(())
    }
}
