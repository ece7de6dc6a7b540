"""gRPC server reflection through the real sirius-manager, with a grpcio client of the
reflection protos (proto/reflection_v1alpha.proto and reflection_v1.proto, compiled at test time
with grpc_tools: Debian packages neither grpcio-reflection nor grpcurl): list_services names
every service, file_containing_symbol resolves a method's file, whose FileDescriptorProto decodes
into the same service definition protoc makes of proto/, file_by_filename answers the same
bytes, and unknown names get an error_response NOT_FOUND on the same stream."""
import os
import sys

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from conftest import ROOT

SERVICES = {"scan.AgentService", "hello.HelloService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}


@pytest.fixture(scope="module")
def rpb(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("refl_pb"))
    from grpc_tools import protoc
    proto_dir = os.path.join(ROOT, "proto")
    files = [os.path.join(proto_dir, f) for f in
             ("reflection_v1alpha.proto", "reflection_v1.proto", "agent.proto", "hello.proto")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}"] + files)
    assert rc == 0, "protoc failed for the reflection protos"
    sys.path.insert(0, out)
    import reflection_v1alpha_pb2
    import reflection_v1_pb2
    import agent_pb2
    import hello_pb2
    return {"v1alpha": reflection_v1alpha_pb2, "v1": reflection_v1_pb2, "agent": agent_pb2,
            "hello": hello_pb2}


def ask(manager, mod, version, reqs):
    """Sends reqs on one ServerReflectionInfo stream; returns the responses in order."""
    with grpc.insecure_channel(manager.grpc_addr) as ch:
        call = ch.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=mod.ServerReflectionRequest.SerializeToString,
            response_deserializer=mod.ServerReflectionResponse.FromString)
        return list(call(iter(reqs), timeout=10))


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_list_and_describe(manager, rpb, version):
    mod = rpb[version]
    R = mod.ServerReflectionRequest
    rs = ask(manager, mod, version, [
        R(host="h", list_services=""),
        R(file_containing_symbol="hello.HelloService.ConnectStream"),
        R(file_containing_symbol="scan.AgentService"),
        R(file_by_filename="health.proto"),
        R(file_containing_symbol="no.Such.Service"),
        R(file_by_filename="nope.proto"),
    ])
    assert len(rs) == 6
    assert rs[0].valid_host == "h"
    assert rs[0].original_request.list_services == ""
    assert {s.name for s in rs[0].list_services_response.service} == SERVICES

    # The resolved file decodes into the definition protoc makes of proto/hello.proto.
    fdp = descriptor_pb2.FileDescriptorProto.FromString(
        rs[1].file_descriptor_response.file_descriptor_proto[0])
    assert fdp.name == "hello.proto" and fdp.package == "hello"
    want = descriptor_pb2.FileDescriptorProto()
    rpb["hello"].DESCRIPTOR.CopyToProto(want)
    assert [s for s in fdp.service] == [s for s in want.service]
    # protoc's descriptor set also carries json_name; the definitions are otherwise equal.
    for d in (fdp, want):
        for mt in d.message_type:
            for fl in mt.field:
                fl.ClearField("json_name")
    assert fdp.message_type == want.message_type
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    m = pool.FindMethodByName("hello.HelloService.ConnectStream")
    assert m.input_type.full_name == "hello.AgentMessage"
    assert m.output_type.full_name == "hello.ServerMessage"

    fdp = descriptor_pb2.FileDescriptorProto.FromString(
        rs[2].file_descriptor_response.file_descriptor_proto[0])
    want = descriptor_pb2.FileDescriptorProto()
    rpb["agent"].DESCRIPTOR.CopyToProto(want)
    assert fdp.name == "agent.proto" and fdp.service == want.service

    fdp = descriptor_pb2.FileDescriptorProto.FromString(
        rs[3].file_descriptor_response.file_descriptor_proto[0])
    assert fdp.name == "health.proto"
    assert [s.name for s in fdp.service] == ["Health"]

    for r in rs[4:]:
        assert r.WhichOneof("message_response") == "error_response"
        assert r.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_describes_itself(manager, rpb):
    mod = rpb["v1"]
    rs = ask(manager, mod, "v1", [
        mod.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1alpha.ServerReflection"),
        mod.ServerReflectionRequest(file_containing_symbol=".grpc.health.v1.HealthCheckRequest"),
        mod.ServerReflectionRequest(all_extension_numbers_of_type="scan.AgentMessage"),
        mod.ServerReflectionRequest(),
    ])
    fdp = descriptor_pb2.FileDescriptorProto.FromString(
        rs[0].file_descriptor_response.file_descriptor_proto[0])
    assert fdp.package == "grpc.reflection.v1alpha"
    assert fdp.service[0].method[0].client_streaming and fdp.service[0].method[0].server_streaming
    fdp = descriptor_pb2.FileDescriptorProto.FromString(
        rs[1].file_descriptor_response.file_descriptor_proto[0])
    assert fdp.name == "health.proto"
    assert rs[2].all_extension_numbers_response.base_type_name == "scan.AgentMessage"
    assert list(rs[2].all_extension_numbers_response.extension_number) == []
    assert rs[3].error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_undecodable_request_ends_the_stream(manager):
    with grpc.insecure_channel(manager.grpc_addr) as ch:
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([b"\xff\xff\xff"]), timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The manager keeps serving.
    with grpc.insecure_channel(manager.grpc_addr) as ch:
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        assert len(list(call(iter([b"\x3a\x00"]), timeout=10))) == 1


def test_setting_turns_it_off(manager_factory, rpb):
    m = manager_factory(env={"GRPC_REFLECTION": "false"})
    mod = rpb["v1alpha"]
    with pytest.raises(grpc.RpcError) as e:
        ask(m, mod, "v1alpha", [mod.ServerReflectionRequest(list_services="")])
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # the other services still serve
    with grpc.insecure_channel(m.grpc_addr) as ch:
        call = ch.unary_unary("/hello.HelloService/Ping",
                              request_serializer=rpb["hello"].PingRequest.SerializeToString,
                              response_deserializer=rpb["hello"].PingResponse.FromString)
        assert call(rpb["hello"].PingRequest(agent_id="x"), timeout=5).message
