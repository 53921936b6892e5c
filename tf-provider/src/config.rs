//! The provider block: `insecure_registries`, `ca_file`, `docker_config`,
//! `registry_auth` and `kubernetes`, read into the backends' settings with attribute
//! paths on every error.

use std::path::PathBuf;

use secrecy::SecretString;

use crate::backend::{DirectConfig, RegistryAuth};
use crate::codec::Value;
use crate::diag::{Diagnostic, PathStep};
use crate::kube::KubeConfig;

type Diags = Vec<Diagnostic>;

fn string_attr(config: &Value, name: &str, diags: &mut Diags) -> Option<String> {
    match config.get(name) {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        Value::Unknown => {
            diags.push(
                Diagnostic::error(
                    format!("{name} must be known when the provider is configured"),
                    "Provider settings cannot depend on values only known after apply.",
                )
                .at(name),
            );
            None
        }
        _ => None,
    }
}

/// The provider block, parsed.
#[derive(Debug, Default)]
pub struct ProviderConfig {
    /// Direct-mode (engine) settings.
    pub direct: DirectConfig,
    /// The `kubernetes` block, if present.
    pub kubernetes: Option<KubeConfig>,
}

/// Reads the provider block. Errors carry attribute paths.
pub fn provider_config(config: &Value) -> (ProviderConfig, Diags) {
    let mut diags = Vec::new();
    let mut out = DirectConfig::default();
    match config.get("insecure_registries") {
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.is_empty() && !s.contains('/') && !s.contains(char::is_whitespace) => {
                        out.insecure_registries.push(s.to_string())
                    }
                    Some(s) => diags.push(
                        Diagnostic::error(
                            "Invalid insecure registry",
                            format!("{s:?} is not a registry address; write `host:port`, e.g. \"127.0.0.1:5000\"."),
                        )
                        .at_path(vec![PathStep::Attr("insecure_registries".into()), PathStep::Index(i as i64)]),
                    ),
                    None if item.is_unknown() => {}
                    None => diags.push(
                        Diagnostic::error("Invalid insecure registry", "Entries must be strings.")
                            .at_path(vec![PathStep::Attr("insecure_registries".into()), PathStep::Index(i as i64)]),
                    ),
                }
            }
        }
        Value::Unknown => diags.push(
            Diagnostic::error(
                "insecure_registries must be known when the provider is configured",
                "",
            )
            .at("insecure_registries"),
        ),
        _ => {}
    }
    out.ca_file = string_attr(config, "ca_file", &mut diags).map(PathBuf::from);
    out.docker_config = string_attr(config, "docker_config", &mut diags).map(PathBuf::from);
    if let Some(blocks) = config.get("registry_auth").as_list() {
        for (i, b) in blocks.iter().enumerate() {
            let path = |a: &str| {
                vec![
                    PathStep::Attr("registry_auth".into()),
                    PathStep::Index(i as i64),
                    PathStep::Attr(a.into()),
                ]
            };
            let mut field = |a: &str| match b.get(a) {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Unknown => None,
                _ => {
                    diags.push(
                        Diagnostic::error(format!("registry_auth {a} is empty"), "")
                            .at_path(path(a)),
                    );
                    None
                }
            };
            if let (Some(address), Some(username), Some(password)) =
                (field("address"), field("username"), field("password"))
            {
                out.registry_auth.push(RegistryAuth {
                    address,
                    username,
                    password: SecretString::from(password),
                });
            }
        }
    }
    let kubernetes = config
        .get("kubernetes")
        .as_list()
        .and_then(|l| l.first())
        .map(|k| {
            let mut field = |a: &str| match k.get(a) {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Unknown => {
                    diags.push(
                        Diagnostic::error(
                            format!("kubernetes {a} must be known when the provider is configured"),
                            "",
                        )
                        .at_path(vec![
                            PathStep::Attr("kubernetes".into()),
                            PathStep::Index(0),
                            PathStep::Attr(a.into()),
                        ]),
                    );
                    None
                }
                _ => None,
            };
            KubeConfig {
                config_path: field("config_path").map(PathBuf::from),
                config_context: field("config_context"),
                namespace: field("namespace"),
            }
        });
    (
        ProviderConfig {
            direct: out,
            kubernetes,
        },
        diags,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Direct;

    fn obj(pairs: Vec<(&str, Value)>) -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    #[test]
    fn provider_block_is_read_with_paths_on_errors() {
        let config = obj(vec![
            (
                "insecure_registries",
                Value::List(vec![
                    Value::String("127.0.0.1:5000".into()),
                    Value::String("http://x/y".into()),
                ]),
            ),
            ("ca_file", Value::String("/ca.pem".into())),
            (
                "registry_auth",
                Value::List(vec![obj(vec![
                    ("address", Value::String("ghcr.io".into())),
                    ("username", Value::String("me".into())),
                    ("password", Value::String(String::new())),
                ])]),
            ),
            ("kubernetes", Value::List(vec![])),
        ]);
        let (cfg, diags) = provider_config(&config);
        assert_eq!(
            cfg.direct.insecure_registries,
            vec!["127.0.0.1:5000".to_string()]
        );
        assert_eq!(cfg.direct.ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(cfg.direct.registry_auth.is_empty());
        assert!(cfg.kubernetes.is_none());
        assert_eq!(
            diags[0].path,
            vec![
                PathStep::Attr("insecure_registries".into()),
                PathStep::Index(1)
            ]
        );
        assert_eq!(
            diags[1].path,
            vec![
                PathStep::Attr("registry_auth".into()),
                PathStep::Index(0),
                PathStep::Attr("password".into())
            ]
        );
    }

    /// Configuration types holding passwords never print them through `Debug` (a
    /// `tracing::debug!(?config)` or an error message formatting them stays safe).
    #[test]
    fn debug_output_never_shows_a_password() {
        let config = obj(vec![(
            "registry_auth",
            Value::List(vec![obj(vec![
                ("address", Value::String("ghcr.io".into())),
                ("username", Value::String("me".into())),
                ("password", Value::String("hunter2-very-secret".into())),
            ])]),
        )]);
        let (cfg, diags) = provider_config(&config);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(cfg.direct.registry_auth.len(), 1);
        for shown in [
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{:?}", cfg.direct),
            format!("{:?}", cfg.direct.registry_auth[0]),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
            assert!(shown.contains("ghcr.io") && shown.contains("me"), "{shown}");
        }
        // The backend built from it does not show it either.
        let direct = Direct::new(cfg.direct).unwrap();
        assert!(!format!("{direct:?}").contains("hunter2"));
    }

    #[test]
    fn kubernetes_block_selects_kubernetes_mode() {
        let config = obj(vec![(
            "kubernetes",
            Value::List(vec![obj(vec![
                ("config_path", Value::String("/kubeconfig".into())),
                ("config_context", Value::Null),
                ("namespace", Value::String("team".into())),
            ])]),
        )]);
        let (cfg, diags) = provider_config(&config);
        assert!(diags.is_empty());
        let k = cfg.kubernetes.unwrap();
        assert_eq!(k.config_path, Some(PathBuf::from("/kubeconfig")));
        assert_eq!(k.config_context, None);
        assert_eq!(k.namespace.as_deref(), Some("team"));
    }
}
