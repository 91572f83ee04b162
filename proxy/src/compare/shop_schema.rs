//! A test schema: `shop.Orders/Get` answering `shop.Reply`, built in code as `protoc
//! --include_imports --descriptor_set_out` would write it. Shared by `compare::protobuf`'s unit
//! tests and `proxy/tests/fuzz.rs` (which includes this file by path).

/// `shop.Orders/Get` answering `shop.Reply { string name = 1; repeated Item items = 2;
/// map<string, int64> prices = 3; repeated int32 codes = 4; }`, `Item { int64 price = 1;
/// string updated_at = 5; }`, as `protoc --include_imports --descriptor_set_out` would
/// write it.
pub(crate) fn shop_descriptors() -> cutover_config::DescriptorSet {
    use prost_reflect::prost::Message;
    use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
    use prost_reflect::prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MessageOptions, MethodDescriptorProto, ServiceDescriptorProto,
    };
    let field = |name: &str, number: i32, label: Label, kind: Type, type_name: Option<&str>| {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(label as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        }
    };
    let item = DescriptorProto {
        name: Some("Item".into()),
        field: vec![
            field("price", 1, Label::Optional, Type::Int64, None),
            field("updated_at", 5, Label::Optional, Type::String, None),
        ],
        ..Default::default()
    };
    let entry = DescriptorProto {
        name: Some("PricesEntry".into()),
        field: vec![
            field("key", 1, Label::Optional, Type::String, None),
            field("value", 2, Label::Optional, Type::Int64, None),
        ],
        options: Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = DescriptorProto {
        name: Some("Reply".into()),
        field: vec![
            field("name", 1, Label::Optional, Type::String, None),
            field(
                "items",
                2,
                Label::Repeated,
                Type::Message,
                Some(".shop.Item"),
            ),
            field(
                "prices",
                3,
                Label::Repeated,
                Type::Message,
                Some(".shop.Reply.PricesEntry"),
            ),
            field("codes", 4, Label::Repeated, Type::Int32, None),
        ],
        nested_type: vec![entry],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("shop.proto".into()),
        package: Some("shop".into()),
        syntax: Some("proto3".into()),
        message_type: vec![item, reply],
        service: vec![ServiceDescriptorProto {
            name: Some("Orders".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Get".into()),
                input_type: Some(".shop.Reply".into()),
                output_type: Some(".shop.Reply".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = FileDescriptorSet { file: vec![file] }.encode_to_vec();
    cutover_config::DescriptorSet::decode("shop.pb", &bytes).expect("a valid set")
}
