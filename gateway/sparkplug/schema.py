"""The Sparkplug B payload schema (package `org.eclipse.tahu.protobuf`, message `Payload`), built as a
protobuf descriptor at import time with the `protobuf` package.

Why not a generated `_pb2.py`: generating one needs `protoc` (a toolchain this project does not otherwise
need), and the generated file pins a protobuf runtime version. The field numbers and types below are those of
the Sparkplug B 3.0 specification's payload definition (chapter 6, "Sparkplug B Payload"); the tests decode
what we encode with Eclipse Tahu's own JavaScript decoder (npm `sparkplug-payload`), which is the independent
check that these numbers are right.

Only what an edge node needs is declared with full structure (metrics, property sets, metadata); DataSet and
Template are declared too so that a host's payload carrying them still parses.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "org.eclipse.tahu.protobuf"

# Sparkplug B data types (spec 6.4.16), the `datatype` of a metric and `type` of a property value.
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT = 9, 10, 11, 12, 13, 14
PROPERTY_SET = 20
TYPE_NAMES = {INT8: "Int8", INT16: "Int16", INT32: "Int32", INT64: "Int64", UINT8: "UInt8", UINT16: "UInt16",
              UINT32: "UInt32", UINT64: "UInt64", FLOAT: "Float", DOUBLE: "Double", BOOLEAN: "Boolean",
              STRING: "String", DATETIME: "DateTime", TEXT: "Text"}

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_T = {"uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE,
      "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}


def _msg(name: str, fields: list, nested=(), oneofs=(), extensions=None) -> descriptor_pb2.DescriptorProto:
    """fields: (name, number, type, label, oneof_index or None); a type that is not a scalar is a message
    type name relative to Payload."""
    m = descriptor_pb2.DescriptorProto(name=name)
    for o in oneofs:
        m.oneof_decl.add(name=o)
    for fname, num, typ, label, oneof in fields:
        f = m.field.add(name=fname, number=num, label=label)
        if typ in _T:
            f.type = _T[typ]
        else:
            f.type = _F.TYPE_MESSAGE
            f.type_name = f".{PACKAGE}.Payload.{typ}"
        if oneof is not None:
            f.oneof_index = oneof
    m.nested_type.extend(nested)
    if extensions:
        m.extension_range.add(start=extensions, end=536870912)
    return m


def _file() -> descriptor_pb2.FileDescriptorProto:
    ext = _msg("ParameterValueExtension", [], extensions=1)
    parameter = _msg("Parameter", [
        ("name", 1, "string", _OPT, None), ("type", 2, "uint32", _OPT, None),
        ("int_value", 3, "uint32", _OPT, 0), ("long_value", 4, "uint64", _OPT, 0),
        ("float_value", 5, "float", _OPT, 0), ("double_value", 6, "double", _OPT, 0),
        ("boolean_value", 7, "bool", _OPT, 0), ("string_value", 8, "string", _OPT, 0),
        ("extension_value", 9, "Template.Parameter.ParameterValueExtension", _OPT, 0)],
        nested=[ext], oneofs=["value"])
    template = _msg("Template", [
        ("version", 1, "string", _OPT, None), ("metrics", 2, "Metric", _REP, None),
        ("parameters", 3, "Template.Parameter", _REP, None), ("template_ref", 4, "string", _OPT, None),
        ("is_definition", 5, "bool", _OPT, None)], nested=[parameter], extensions=6)
    dsv_ext = _msg("DataSetValueExtension", [], extensions=1)
    dsv = _msg("DataSetValue", [
        ("int_value", 1, "uint32", _OPT, 0), ("long_value", 2, "uint64", _OPT, 0),
        ("float_value", 3, "float", _OPT, 0), ("double_value", 4, "double", _OPT, 0),
        ("boolean_value", 5, "bool", _OPT, 0), ("string_value", 6, "string", _OPT, 0),
        ("extension_value", 7, "DataSet.DataSetValue.DataSetValueExtension", _OPT, 0)],
        nested=[dsv_ext], oneofs=["value"])
    row = _msg("Row", [("elements", 1, "DataSet.DataSetValue", _REP, None)], extensions=2)
    dataset = _msg("DataSet", [
        ("num_of_columns", 1, "uint64", _OPT, None), ("columns", 2, "string", _REP, None),
        ("types", 3, "uint32", _REP, None), ("rows", 4, "DataSet.Row", _REP, None)],
        nested=[dsv, row], extensions=5)
    pv_ext = _msg("PropertyValueExtension", [], extensions=1)
    prop_value = _msg("PropertyValue", [
        ("type", 1, "uint32", _OPT, None), ("is_null", 2, "bool", _OPT, None),
        ("int_value", 3, "uint32", _OPT, 0), ("long_value", 4, "uint64", _OPT, 0),
        ("float_value", 5, "float", _OPT, 0), ("double_value", 6, "double", _OPT, 0),
        ("boolean_value", 7, "bool", _OPT, 0), ("string_value", 8, "string", _OPT, 0),
        ("propertyset_value", 9, "PropertySet", _OPT, 0), ("propertysets_value", 10, "PropertySetList", _OPT, 0),
        ("extension_value", 11, "PropertyValue.PropertyValueExtension", _OPT, 0)],
        nested=[pv_ext], oneofs=["value"])
    prop_set = _msg("PropertySet", [("keys", 1, "string", _REP, None), ("values", 2, "PropertyValue", _REP, None)],
                    extensions=3)
    prop_list = _msg("PropertySetList", [("propertyset", 1, "PropertySet", _REP, None)], extensions=2)
    meta = _msg("MetaData", [
        ("is_multi_part", 1, "bool", _OPT, None), ("content_type", 2, "string", _OPT, None),
        ("size", 3, "uint64", _OPT, None), ("seq", 4, "uint64", _OPT, None), ("file_name", 5, "string", _OPT, None),
        ("file_type", 6, "string", _OPT, None), ("md5", 7, "string", _OPT, None),
        ("description", 8, "string", _OPT, None)], extensions=9)
    mv_ext = _msg("MetricValueExtension", [], extensions=1)
    metric = _msg("Metric", [
        ("name", 1, "string", _OPT, None), ("alias", 2, "uint64", _OPT, None), ("timestamp", 3, "uint64", _OPT, None),
        ("datatype", 4, "uint32", _OPT, None), ("is_historical", 5, "bool", _OPT, None),
        ("is_transient", 6, "bool", _OPT, None), ("is_null", 7, "bool", _OPT, None),
        ("metadata", 8, "MetaData", _OPT, None), ("properties", 9, "PropertySet", _OPT, None),
        ("int_value", 10, "uint32", _OPT, 0), ("long_value", 11, "uint64", _OPT, 0),
        ("float_value", 12, "float", _OPT, 0), ("double_value", 13, "double", _OPT, 0),
        ("boolean_value", 14, "bool", _OPT, 0), ("string_value", 15, "string", _OPT, 0),
        ("bytes_value", 16, "bytes", _OPT, 0), ("dataset_value", 17, "DataSet", _OPT, 0),
        ("template_value", 18, "Template", _OPT, 0), ("extension_value", 19, "Metric.MetricValueExtension", _OPT, 0)],
        nested=[mv_ext], oneofs=["value"])
    payload = _msg("Payload", [
        ("timestamp", 1, "uint64", _OPT, None), ("metrics", 2, "Metric", _REP, None), ("seq", 3, "uint64", _OPT, None),
        ("uuid", 4, "string", _OPT, None), ("body", 5, "bytes", _OPT, None)],
        nested=[template, dataset, prop_value, prop_set, prop_list, meta, metric], extensions=6)
    f = descriptor_pb2.FileDescriptorProto(name="gasguard/sparkplug_b.proto", package=PACKAGE, syntax="proto2")
    f.message_type.append(payload)
    return f


def _payload_class():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


Payload = _payload_class()
