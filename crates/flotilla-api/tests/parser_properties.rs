//! Properties of the manifest parser and the object decoders, over generated input: no input
//! makes them panic (bad input is an error naming what is wrong), and whatever parses prints
//! and parses back to the same object. Runs 256 cases per property by default; the long run
//! (docs/testing.md) sets PROPTEST_CASES for about ten minutes.

use flotilla_api::manifest::{object_from_value, object_to_value, parse_manifests};
use flotilla_api::pb::api::{Object, WatchEvent};
use flotilla_api::validation::validate_object;
use proptest::prelude::*;
use prost::Message;

fn examples() -> Vec<String> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs/examples");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

/// Edits to apply to a valid manifest: (position, what to do, a character).
fn edits() -> impl Strategy<Value = Vec<(usize, u8, char)>> {
    proptest::collection::vec((any::<usize>(), 0u8..4, any::<char>()), 1..8)
}

fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (pos, op, c) in edits {
        if chars.is_empty() {
            chars.push(*c);
            continue;
        }
        let i = pos % chars.len();
        match op {
            0 => chars[i] = *c,
            1 => chars.insert(i, *c),
            2 => {
                chars.remove(i);
            }
            // Swap in a YAML-significant character.
            _ => chars[i] = [':', '-', ' ', '\n', '{', '[', '"', '#', '&', '*'][(*pos / 7) % 10],
        }
    }
    chars.into_iter().collect()
}

/// Whatever parses must print and parse back to the same object.
fn round_trips(text: &str) -> Result<(), TestCaseError> {
    if let Ok(objs) = parse_manifests("m", text) {
        for m in objs {
            let printed = object_to_value(&m.object);
            let back = object_from_value(&printed).map_err(|e| {
                TestCaseError::fail(format!("printed object does not parse: {e:?}\n{printed}"))
            })?;
            prop_assert_eq!(&back.body, &m.object.body);
            prop_assert_eq!(&back.meta().labels, &m.object.meta().labels);
        }
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9%./:-]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("apiVersion".to_string()),
            Just("kind".to_string()),
            Just("metadata".to_string()),
            Just("spec".to_string()),
            Just("name".to_string()),
            Just("containers".to_string()),
            Just("replicas".to_string()),
            Just("template".to_string()),
            Just("data".to_string()),
            Just("selector".to_string()),
            Just("ports".to_string()),
            "[a-zA-Z]{1,8}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = parse_manifests("fuzz.yaml", &text);
    }

    #[test]
    fn mutated_examples_never_panic_and_round_trip(which in any::<usize>(), e in edits()) {
        let ex = examples();
        let text = mutate(&ex[which % ex.len()], &e);
        round_trips(&text)?;
    }

    #[test]
    fn arbitrary_documents_never_panic(v in json_value(), kind in prop_oneof![
        Just("Deployment"), Just("Pod"), Just("Service"), Just("CronJob"), Just("Secret"), Just("Node"),
    ]) {
        let mut v = v;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("kind".into(), kind.into());
            m.entry("apiVersion").or_insert_with(|| "v1".into());
        }
        if let Ok(o) = object_from_value(&v) {
            let printed = object_to_value(&o);
            prop_assert!(object_from_value(&printed).is_ok(), "{}", printed);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(o) = Object::decode(bytes.as_slice()) {
            let _ = validate_object(&o);
            let _ = object_to_value(&o);
        }
        let _ = WatchEvent::decode(bytes.as_slice());
    }
}
