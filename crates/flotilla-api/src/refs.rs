//! The ConfigMaps and Secrets a pod refers to (env, envFrom, volumes). The agent asks for
//! exactly these, and a server serves a node only objects some pod bound to it refers to (as
//! Kubernetes' node authorizer does), so both sides use this one function.

use std::collections::BTreeSet;

use crate::pb::api::{Container, PodSpec};
use crate::ObjectKey;

fn key(kind: &str, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn container_refs(c: &Container, out: &mut BTreeSet<(String, String)>) {
    for e in &c.env {
        if let Some(src) = &e.value_from {
            if let Some(r) = &src.config_map_key_ref {
                out.insert(("ConfigMap".into(), r.name.clone()));
            }
            if let Some(r) = &src.secret_key_ref {
                out.insert(("Secret".into(), r.name.clone()));
            }
        }
    }
    for e in &c.env_from {
        if let Some(r) = &e.config_map_ref {
            out.insert(("ConfigMap".into(), r.name.clone()));
        }
        if let Some(r) = &e.secret_ref {
            out.insert(("Secret".into(), r.name.clone()));
        }
    }
}

/// Every ConfigMap and Secret the pod's containers, init containers and volumes name, in the
/// pod's namespace, sorted and without duplicates.
pub fn pod_references(namespace: &str, spec: &PodSpec) -> Vec<ObjectKey> {
    let mut set = BTreeSet::new();
    for c in spec.containers.iter().chain(&spec.init_containers) {
        container_refs(c, &mut set);
    }
    for v in &spec.volumes {
        if let Some(cm) = &v.config_map {
            set.insert(("ConfigMap".into(), cm.name.clone()));
        }
        if let Some(s) = &v.secret {
            set.insert(("Secret".into(), s.secret_name.clone()));
        }
    }
    set.into_iter()
        .filter(|(_, name)| !name.is_empty())
        .map(|(kind, name)| key(&kind, namespace, &name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::api::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapVolumeSource, EnvFromSource, EnvVar,
        EnvVarSource, SecretKeySelector, SecretVolumeSource, Volume,
    };

    #[test]
    fn collects_env_envfrom_and_volume_references_once() {
        let c = Container {
            name: "app".into(),
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "a".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar {
                    name: "B".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "pw".into(),
                            key: "b".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            env_from: vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![c],
            volumes: vec![
                Volume {
                    name: "v".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "files".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "s".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: "pw".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let got: Vec<(String, String, String)> = pod_references("ns", &spec)
            .into_iter()
            .map(|k| (k.kind, k.namespace, k.name))
            .collect();
        let want = [
            ("ConfigMap", "ns", "cfg"),
            ("ConfigMap", "ns", "files"),
            ("Secret", "ns", "pw"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(got, want);
    }
}
