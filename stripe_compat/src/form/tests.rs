use super::*;
use proptest::prelude::*;

fn decode(s: &str) -> Result<Params, StripeError> {
    Params::decode(s.as_bytes())
}

fn param_of(s: &str) -> Option<String> {
    decode(s).err().and_then(|e| e.param)
}

#[test]
fn brackets_decode_into_hashes_and_lists() {
    let mut p = decode(
        "amount=2000&currency=usd&metadata[order_no]=7&metadata%5Bnote%5D=a+b%21\
         &expand[]=latest_charge&expand[]=customer&payment_method_types[0]=card",
    )
    .unwrap();
    assert_eq!(p.integer("amount").unwrap(), Some(2000));
    assert_eq!(p.string("currency").unwrap().as_deref(), Some("usd"));
    let metadata = p.string_map("metadata").unwrap().unwrap();
    assert_eq!(metadata["order_no"], "7");
    assert_eq!(metadata["note"], "a b!");
    assert_eq!(
        p.string_list("expand").unwrap(),
        ["latest_charge", "customer"]
    );
    assert_eq!(p.string_list("payment_method_types").unwrap(), ["card"]);
    assert!(p.finish().is_ok());
}

#[test]
fn indexed_lists_of_hashes_decode_in_order() {
    let p = decode("items[0][price]=a&items[0][quantity]=2&items[1][price]=b").unwrap();
    let Some(Value::List(items)) = p.tree().get("items") else {
        panic!("items: {:?}", p.tree());
    };
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0],
        Value::Map(BTreeMap::from([
            ("price".into(), Value::Str("a".into())),
            ("quantity".into(), Value::Str("2".into()))
        ]))
    );
}

#[test]
fn a_parameter_given_twice_or_as_value_and_hash_is_refused_by_name() {
    assert_eq!(param_of("amount=1&amount=2").as_deref(), Some("amount"));
    assert_eq!(
        param_of("metadata=x&metadata[a]=1").as_deref(),
        Some("metadata[a]")
    );
    assert_eq!(
        param_of("metadata[a]=1&metadata=x").as_deref(),
        Some("metadata")
    );
    assert_eq!(
        param_of("metadata[a]=1&metadata[a]=2").as_deref(),
        Some("metadata[a]")
    );
    assert_eq!(
        param_of("expand[]=a&expand[a]=2").as_deref(),
        Some("expand[a]")
    );
}

#[test]
fn broken_names_escapes_and_indexes_are_refused() {
    assert_eq!(param_of("a[b=1").as_deref(), Some("a[b"));
    assert_eq!(param_of("a[b]c=1").as_deref(), Some("a[b]c"));
    assert_eq!(param_of("amount=%zz").as_deref(), Some("amount"));
    assert_eq!(param_of("amount=%C3%28").as_deref(), Some("amount"));
    assert_eq!(param_of("a[2]=x").as_deref(), Some("a[2]"));
    assert!(decode("[a]=1").is_err());
    assert!(decode("a[b][c][d][e][f]=1").is_err());
    assert!(decode("a[b][c][d][e]=1").is_ok());
}

#[test]
fn integers_are_strict_minor_units() {
    for bad in [
        "10.5",
        "1e3",
        " 10",
        "",
        "-",
        "0x10",
        "99999999999999999999",
    ] {
        let mut p = decode(&format!("amount={bad}")).unwrap();
        let e = p.integer("amount").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("amount"), "{bad}");
        assert_eq!(e.status, 400);
    }
    let mut p = decode("amount=-5").unwrap();
    assert_eq!(p.integer("amount").unwrap(), Some(-5));
}

#[test]
fn an_unread_parameter_is_an_unknown_parameter_error() {
    let mut p = decode("amount=1&colour=red").unwrap();
    p.integer("amount").unwrap();
    let e = p.finish().unwrap_err();
    assert_eq!(e.param.as_deref(), Some("colour"));
    assert_eq!(e.message, "Received unknown parameter: colour");
    let p = decode("shipping[name]=x").unwrap();
    assert_eq!(
        p.finish().unwrap_err().param.as_deref(),
        Some("shipping[name]")
    );
}

#[test]
fn ranges_take_a_value_or_bounds() {
    let mut p = decode("created[gte]=10&created[lt]=20").unwrap();
    assert_eq!(p.range("created").unwrap(), (Some(10), Some(19)));
    let mut p = decode("created=15").unwrap();
    assert_eq!(p.range("created").unwrap(), (Some(15), Some(15)));
    let mut p = decode("created[after]=15").unwrap();
    assert_eq!(
        p.range("created").unwrap_err().param.as_deref(),
        Some("created[after]")
    );
    let mut p = decode("created[gte]=x").unwrap();
    assert_eq!(
        p.range("created").unwrap_err().param.as_deref(),
        Some("created[gte]")
    );
}

#[test]
fn fingerprints_ignore_order_and_tell_values_apart() {
    let a = decode("amount=1&currency=usd&metadata[a]=1&metadata[b]=2").unwrap();
    let b = decode("metadata[b]=2&currency=usd&amount=1&metadata[a]=1").unwrap();
    let c = decode("amount=2&currency=usd&metadata[a]=1&metadata[b]=2").unwrap();
    assert_eq!(a.fingerprint("pi"), b.fingerprint("pi"));
    assert_ne!(a.fingerprint("pi"), c.fingerprint("pi"));
    assert_ne!(a.fingerprint("pi"), a.fingerprint("re"));
}

#[test]
fn too_many_pairs_are_refused() {
    let body = (0..=MAX_PAIRS)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    assert!(decode(&body).is_err());
}

/// Encodes as the SDKs do: percent-escaped names and values, lists with `[]` or `[i]`.
fn encode(params: &BTreeMap<String, Value>, indexed: bool) -> String {
    fn escape(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fn walk(prefix: &str, value: &Value, indexed: bool, out: &mut Vec<String>) {
        match value {
            Value::Str(s) => out.push(format!("{}={}", escape(prefix), escape(s))),
            Value::Map(map) => {
                for (k, v) in map {
                    walk(&format!("{prefix}[{k}]"), v, indexed, out)
                }
            }
            Value::List(list) => {
                for (i, v) in list.iter().enumerate() {
                    let name = if indexed {
                        format!("{prefix}[{i}]")
                    } else {
                        format!("{prefix}[]")
                    };
                    walk(&name, v, indexed, out)
                }
            }
        }
    }
    let mut out = Vec::new();
    for (k, v) in params {
        walk(k, v, indexed, &mut out);
    }
    out.join("&")
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_ .!é]{0,12}"
        .prop_filter("not an index", |s| !s.bytes().all(|b| b.is_ascii_digit()))
}

fn leaf() -> impl Strategy<Value = Value> {
    ".{0,20}".prop_map(Value::Str)
}

fn params() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let value = prop_oneof![
        leaf(),
        prop::collection::btree_map(name(), leaf(), 1..4).prop_map(Value::Map),
        prop::collection::vec(leaf(), 1..4).prop_map(Value::List),
    ];
    prop::collection::btree_map(name(), value, 0..6)
}

proptest! {
    #[test]
    fn what_an_sdk_encodes_decodes_to_the_same_parameters(p in params(), indexed in any::<bool>()) {
        let decoded = Params::decode(encode(&p, indexed).as_bytes()).unwrap();
        prop_assert_eq!(decoded.tree(), &p);
    }

    #[test]
    fn any_input_decodes_or_is_refused_with_a_400(input in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "[a-z\\[\\]=&%0-9]{0,60}".prop_map(String::into_bytes),
    ]) {
        if let Err(e) = Params::decode(&input) {
            prop_assert_eq!(e.status, 400);
            prop_assert_eq!(e.kind, crate::error::ErrorType::InvalidRequestError);
        }
    }
}
