//! Proves that manifest parsing and validation (the code the CLI and the server share) refuse
//! a corpus of bad manifests, each with the error a user would need: the file, the document's
//! index and the field path, then what is wrong. Also that the good examples shipped in
//! `cluster-configs/examples/` parse, and that the classic nginx Deployment gets Kubernetes'
//! defaults.

use flotilla_api::manifest::parse_manifests;
use flotilla_api::pb::api::object::Body;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n";

fn deployment(spec_extra: &str, container_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n{spec_extra}  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: c\n        image: nginx:1\n{container_extra}"
    )
}

/// (manifest, expected "path: message" prefix after "f.yaml: document N: ").
fn corpus() -> Vec<(String, &'static str)> {
    let c = |extra: &str| deployment("", extra);
    let s = |extra: &str| deployment(extra, "");
    vec![
        ("kind: Pod\nmetadata: {name: a}\n".into(), "apiVersion: required field is missing"),
        ("apiVersion: v1\nmetadata: {name: a}\n".into(), "kind: required field is missing"),
        ("apiVersion: v1\nkind: Pod\n".into(), "metadata: required field is missing"),
        ("apiVersion: v1\nkind: Gizmo\nmetadata: {name: a}\n".into(), "kind: unsupported kind \"Gizmo\""),
        ("apiVersion: v2\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: i}]}\n".into(), "apiVersion: Pod is served as apiVersion \"v1\""),
        ("apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n".into(), "apiVersion: Deployment is served as apiVersion \"apps/v1\""),
        ("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n".into(), "metadata.name: required field is missing"),
        (POD.replace("name: p", "name: Bad_Name"), "metadata.name: invalid value \"Bad_Name\""),
        (POD.replace("name: p", "name: -p"), "metadata.name: invalid value \"-p\""),
        (POD.replace("  name: p\n", "  name: p\n  namespace: Team.A\n"), "metadata.namespace: invalid value \"Team.A\""),
        (POD.replace("  name: p\n", "  name: p\n  labels: {\"bad key\": x}\n"), "metadata.labels[bad key]: invalid label key"),
        (POD.replace("  name: p\n", "  name: p\n  labels: {app: \"-x\"}\n"), "metadata.labels[app]: invalid label value"),
        (POD.replace("  name: p\n", "  name: p\n  colour: red\n"), "metadata.colour: unknown field \"colour\""),
        (POD.replace("spec:\n", "sepc: {}\nspec:\n"), "sepc: unknown field \"sepc\""),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    imagePullPolcy: Always\n"), "spec.containers[0].imagePullPolcy: unknown field \"imagePullPolcy\""),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n".into(), "spec.containers: required value"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".into(), "spec: required field is missing"),
        (POD.replace("    image: busybox:1\n", ""), "spec.containers[0].image: required field is missing"),
        (POD.replace("  - name: c\n", "  - name: C_1\n"), "spec.containers[0].name: invalid value \"C_1\""),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n  - name: c\n    image: other:1\n"), "spec.containers[1].name: duplicate value \"c\""),
        (POD.replace("  containers:\n", "  initContainers: [{name: c, image: i}]\n  containers:\n"), "spec.containers[0].name: duplicate value \"c\""),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    ports: [{containerPort: 70000}]\n"), "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    ports: [{containerPort: 0}]\n"), "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    ports: [{containerPort: 80, hostPort: 99999}]\n"), "spec.containers[0].ports[0].hostPort: must be between 1 and 65535"),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    ports: [{containerPort: 80, protocol: HTTP}]\n"), "spec.containers[0].ports[0].protocol: unsupported value \"HTTP\""),
        (POD.replace("    image: busybox:1\n", "    image: busybox:1\n    ports: [{containerPort: \"eighty\"}]\n"), "spec.containers[0].ports[0].containerPort: expected an integer"),
        (c("        resources: {limits: {memory: 12 GB}}\n"), "spec.template.spec.containers[0].resources.limits.memory: quantities must match the regular expression"),
        (c("        resources: {requests: {cpu: 1.5.1}}\n"), "spec.template.spec.containers[0].resources.requests.cpu: quantities must match"),
        (c("        resources: {requests: {cpu: \"2\"}, limits: {cpu: 500m}}\n"), "spec.template.spec.containers[0].resources.requests.cpu: must be less than or equal to cpu limit"),
        (c("        resources: {limits: {memory: -1Gi}}\n"), "spec.template.spec.containers[0].resources.limits.memory: must be greater than or equal to 0"),
        (c("        imagePullPolicy: Sometimes\n"), "spec.template.spec.containers[0].imagePullPolicy: unsupported value \"Sometimes\""),
        (c("        livenessProbe: {periodSeconds: 5}\n"), "spec.template.spec.containers[0].livenessProbe: must specify exactly one handler"),
        (c("        readinessProbe: {httpGet: {port: 0}}\n"), "spec.template.spec.containers[0].readinessProbe.httpGet.port: must be between 1 and 65535"),
        (c("        volumeMounts: [{name: data, mountPath: /data}]\n"), "spec.template.spec.containers[0].volumeMounts[0].name: not found"),
        (c("        env: [{value: x}]\n"), "spec.template.spec.containers[0].env[0].name: required field is missing"),
        (deployment("", "").replace("matchLabels: {app: web}", "matchLabels: {app: api}"), "spec.template.metadata.labels: `selector` does not match template `labels`"),
        (deployment("", "").replace("  selector:\n    matchLabels: {app: web}\n", ""), "spec.selector: required field is missing"),
        (deployment("", "").replace("replicas: 2", "replicas: -1"), "spec.replicas: must be greater than or equal to 0"),
        (deployment("", "").replace("replicas: 2", "replicas: two"), "spec.replicas: expected an integer"),
        (s("  strategy: {type: BlueGreen}\n"), "spec.strategy.type: unsupported value \"BlueGreen\""),
        (s("  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}\n"), "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"),
        (s("  strategy: {rollingUpdate: {maxSurge: 150%}}\n"), "spec.strategy.rollingUpdate.maxSurge: a valid percent string"),
        (s("  paused: maybe\n"), "spec.paused: invalid type"),
        (deployment("", "").replace("      containers:\n", "      restartPolicy: Sometimes\n      containers:\n"), "spec.template.spec.restartPolicy: unsupported value \"Sometimes\""),
        (format!("{POD}  volumes: [{{name: s, secret: {{secretName: x, defaultMode: 0800}}}}]\n"), "spec.volumes[0].secret.defaultMode: must be a number between 0 and 0777 (octal)"),
        (format!("{POD}  volumes: [{{name: c, configMap: {{name: x, items: [{{key: k, path: ../k}}]}}}}]\n"), "spec.volumes[0].configMap.items[0].path: must be a relative path without '..'"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}, {port: 81}]}\n".into(), "spec.ports[0].name: required when a service has more than one port"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: 0}]}\n".into(), "spec.ports[0].targetPort: must be between 1 and 65535"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: Magic, ports: [{port: 80}]}\n".into(), "spec.type: unsupported value \"Magic\""),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: \"not base64!\"}\n".into(), "data.k: "),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {\"bad/key\": x}\n".into(), "data[bad/key]: invalid key"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n".into(), "metadata.name: invalid value \"a.b\""),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: b}\n".into(), "metadata.namespace: Namespace is not namespaced"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: [1]}\n".into(), "data.k: invalid type"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nimmutable: sure\n".into(), "immutable: invalid type"),
        ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {template: {spec: {containers: [{name: c, image: i}]}}}\n".into(), "spec.template.spec.restartPolicy: unsupported value \"\""),
        ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {backoffLimit: -1, template: {spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}\n".into(), "spec.backoffLimit: must be greater than or equal to 0"),
        ("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {schedule: \"61 * * * *\", jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}}}\n".into(), "spec.schedule: minute field"),
        ("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {schedule: \"* * *\", jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}}}\n".into(), "spec.schedule: expected exactly 5 fields"),
        ("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {schedule: \"@hourly\", concurrencyPolicy: Sometimes, jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}}}\n".into(), "spec.concurrencyPolicy: unsupported value \"Sometimes\""),
        ("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec: {selector: {matchLabels: {a: b}}, updateStrategy: {type: Sometimes}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}}\n".into(), "spec.updateStrategy.type: unsupported value \"Sometimes\""),
        ("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec: {podManagementPolicy: Random, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}}\n".into(), "spec.podManagementPolicy: unsupported value \"Random\""),
        ("apiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\nsubsets: [{addresses: [{ip: 300.1.1.1}]}]\n".into(), "subsets[0].addresses[0].ip: must be a valid IP address"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {taints: [{key: k, effect: Sometimes}]}\n".into(), "spec.taints[0].effect: unsupported value \"Sometimes\""),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: default}\n".into(), "metadata.namespace: Node is not namespaced"),
        ("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l}\nspec: {leaseDurationSeconds: 0}\n".into(), "spec.leaseDurationSeconds: must be greater than 0"),
        ("apiVersion: v1\nkind: Event\nmetadata: {name: e}\nreason: X\n".into(), "involvedObject: kind and name are required"),
        ("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec: {scaleTargetRef: {kind: Deployment, name: d}, minReplicas: 5, maxReplicas: 2}\n".into(), "spec.minReplicas: must be between 1 and maxReplicas (2)"),
        ("apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec: {maxReplicas: 2}\n".into(), "apiVersion: HorizontalPodAutoscaler is served as apiVersion \"autoscaling/v2\""),
    ]
}

#[test]
fn every_bad_manifest_is_refused_with_its_path_and_reason() {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        // Put a good document first so the index in the message is checked too.
        let doc = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ok}}\n---\n{text}");
        match parse_manifests("f.yaml", &doc) {
            Ok(_) => failures.push(format!("case {i}: accepted:\n{text}")),
            Err(e) => {
                let got = e.to_string();
                let prefix = format!("f.yaml: document 1: {want}");
                if !got.starts_with(&prefix) {
                    failures.push(format!("case {i}:\n  want {prefix}\n  got  {got}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_examples_parse_and_the_classic_deployment_is_defaulted() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs/examples");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for m in parse_manifests(&p.display().to_string(), &text).unwrap() {
            kinds.push(m.object.kind.clone());
        }
    }
    for k in [
        "ConfigMap",
        "Namespace",
        "Secret",
        "Pod",
        "Service",
        "Deployment",
        "ReplicaSet",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no example of {k}");
    }
    let text = std::fs::read_to_string(dir.join("nginx-deployment.yaml")).unwrap();
    let d = parse_manifests("nginx", &text).unwrap().remove(0).object;
    assert_eq!(d.meta().namespace, "default");
    let Some(Body::Deployment(d)) = d.body else {
        panic!()
    };
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.revision_history_limit, Some(10));
    let ru = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        (ru.max_surge.as_str(), ru.max_unavailable.as_str()),
        ("25%", "25%")
    );
    let pod = spec.template.unwrap().spec.unwrap();
    assert_eq!(pod.restart_policy, "Always");
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy, "IfNotPresent");
    assert_eq!(c.ports[0].protocol, "TCP");
}

#[test]
fn json_documents_and_lists_parse_like_yaml() {
    let json = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{"replicas":1,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i:1"}]}}}}"#;
    let objs = parse_manifests("d.json", json).unwrap();
    assert_eq!(objs[0].object.kind, "Deployment");
    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{json},{json}]}}"#);
    assert_eq!(parse_manifests("l.json", &list).unwrap().len(), 2);
    let bad = json.replace("\"replicas\":1", "\"replicas\":\"x\"");
    let e = parse_manifests("d.json", &bad).unwrap_err();
    assert_eq!(e.path, "spec.replicas");
}
