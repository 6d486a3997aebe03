"""gRPC server reflection, both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only the v1alpha service; current clients (grpcurl, Postman,
grpcui, the Java and Go reflection clients) ask v1 first. v1 is v1alpha renamed: the same
messages with the same field numbers, so its bytes are the same. So the v1 service is served
by grpcio-reflection's own servicer logic under the v1 name, and the v1 file descriptor (the
v1alpha one with its package renamed) is added to the default descriptor pool so that a client
can also describe ``grpc.reflection.v1.ServerReflection`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import _async as v1alpha_aio
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb

__all__ = ["V1ALPHA_SERVICE", "V1_SERVICE", "enable_reflection", "v1_file_descriptor"]

V1ALPHA_SERVICE: str = v1alpha.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection.proto, built from grpcio-reflection's v1alpha descriptor."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name = _V1_FILE
    proto.package = new
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old}."):
                field.type_name = f".{new}." + field.type_name.removeprefix(f".{old}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{new}." + method.input_type.removeprefix(f".{old}.")
            method.output_type = f".{new}." + method.output_type.removeprefix(f".{old}.")
    return proto


def _register_v1_descriptor(pool: Any) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.Add(v1_file_descriptor())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``: ``service_names`` and both reflection services."""
    names = tuple(sorted({*service_names, V1ALPHA_SERVICE, V1_SERVICE}))
    _register_v1_descriptor(descriptor_pool.Default())
    servicer: Any = v1alpha_aio.ReflectionServicer(names)
    v1alpha.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {_METHOD: handler}),))
