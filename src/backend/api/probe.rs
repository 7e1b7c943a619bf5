//! Reaching the server once at open: is it llama.cpp (`/props`) or another OpenAI-compatible
//! server, which model name to send, the llama.cpp commit check, and the facts for the report.

use super::helper::HelperError;
use super::{ApiBackend, ApiFlavor, Endpoint};
use crate::backend::system_info::system_info_from_log;
use crate::backend::{OpenError, LLAMA_CPP_COMMIT};
use serde_json::{json, Value};

impl ApiBackend {
    /// GET `path`: its JSON answer, None for an error status or a body that is not JSON.
    fn get_json(&self, path: &str) -> Result<Option<Value>, HelperError> {
        let url = format!("{}{}", self.base, path);
        let (status, text) = self.helper("GET", path, self.authed(self.client.get(&url)))?;
        if !(200..300).contains(&status) {
            return Ok(None);
        }
        Ok(serde_json::from_str(&text).ok())
    }

    /// Reach the server, identify it (`/props`, `/v1/models`), settle the flavor and model name,
    /// and enforce the commit check.
    pub(super) fn probe(&mut self) -> Result<Value, OpenError> {
        let who = self.who();
        let props = self.get_json("/props").map_err(|e| match e {
            HelperError::Stalled(m) => OpenError::Stalled(m),
            HelperError::Failed(e) => OpenError::Server(format!(
                "{who} is unreachable ({e}): start the server or fix the flag"
            )),
        })?;
        let models = match self.get_json("/v1/models") {
            Err(HelperError::Stalled(m)) => return Err(OpenError::Stalled(m)),
            other => other.ok().flatten(),
        };
        let build_info = props
            .as_ref()
            .and_then(|p| p.get("build_info"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let short = &LLAMA_CPP_COMMIT[..7];
        let commit_match = build_info.as_ref().map(|b| b.contains(short));
        if commit_match == Some(false) && !self.settings.allow_commit_mismatch {
            return Err(OpenError::Server(format!(
                "{who} reports llama.cpp build {} but ttft links commit {short}: comparing different \
                 llama.cpp versions is not a fair api-vs-inproc test (pass --allow-commit-mismatch to do it anyway)",
                build_info.as_deref().unwrap_or("?")
            )));
        }
        let detected = detect_flavor(props.as_ref());
        self.flavor = self.settings.flavor.unwrap_or(detected);
        if self.flavor == ApiFlavor::Openai && self.settings.endpoint == Endpoint::Completion {
            return Err(OpenError::Server(format!(
                "{who} is not llama.cpp (no /props), so it has no native /completion: use --api-endpoint v1 or --chat"
            )));
        }
        self.model = self.pick_model(models.as_ref());
        Ok(self.info_json(
            props.as_ref(),
            models.as_ref(),
            build_info.as_deref(),
            commit_match,
            detected,
        ))
    }

    /// The model name to send: `--api-model`, else (OpenAI flavor) the first id `/v1/models`
    /// lists, else the alias.
    fn pick_model(&self, models: Option<&Value>) -> String {
        match (&self.settings.api_model, self.flavor) {
            (Some(m), _) => m.clone(),
            (None, ApiFlavor::Openai) => models
                .and_then(|m| m.pointer("/data/0/id"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| self.settings.model_alias.clone()),
            (None, ApiFlavor::Llama) => self.settings.model_alias.clone(),
        }
    }

    /// What the report says about the server, once the probe has settled flavor and model.
    fn info_json(
        &self,
        props: Option<&Value>,
        models: Option<&Value>,
        build_info: Option<&str>,
        commit_match: Option<bool>,
        detected: ApiFlavor,
    ) -> Value {
        let log_system_info = self
            .server
            .as_ref()
            .and_then(|s| std::fs::read_to_string(&s.log_path).ok())
            .and_then(|log| system_info_from_log(&log));
        json!({
            "base_url": self.base,
            "endpoint": self.settings.endpoint.path(),
            "spawned": self.server.is_some(),
            "server_args": self.server.as_ref().map(|s| s.args.clone()),
            "server_log": self.server.as_ref().map(|s| s.log_path.display().to_string()),
            "server_pid": self.server.as_ref().map(|s| s.pid()),
            // What the spawned server was given (the same value as inproc); unknown for a remote one.
            "n_gpu_layers": self.server.as_ref().and_then(|s| {
                let i = s.args.iter().position(|a| a == "--n-gpu-layers")?;
                s.args.get(i + 1)?.parse::<u32>().ok()
            }),
            "build_info": build_info,
            "commit_matches_linked": commit_match,
            "system_info": log_system_info,
            "model_alias": self.settings.model_alias,
            "model": self.model,
            "flavor": self.flavor,
            "flavor_detected": detected,
            "server_timings": match self.flavor {
                ApiFlavor::Llama => "timings.prompt_ms / prompt_n / cache_n from the final event",
                ApiFlavor::Openai => "unavailable: an OpenAI-compatible server reports no prompt time (server_prompt_ms and api_overhead_ms stay empty)",
            },
            "props": props.map(|p| json!({
                "n_ctx": p.pointer("/default_generation_settings/n_ctx"),
                "model_path": p.get("model_path"),
                "total_slots": p.get("total_slots"),
            })),
            "models": models.and_then(|m| m.get("data")).cloned(),
        })
    }
}

/// Only llama.cpp answers `/props` with its build and generation settings.
fn detect_flavor(props: Option<&Value>) -> ApiFlavor {
    match props {
        Some(p)
            if p.get("build_info").is_some() || p.get("default_generation_settings").is_some() =>
        {
            ApiFlavor::Llama
        }
        _ => ApiFlavor::Openai,
    }
}
