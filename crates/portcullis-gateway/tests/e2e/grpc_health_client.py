"""A `grpcio` client of the standard health service, for tests/e2e_grpc.rs:
one call through the gateway, in cleartext HTTP/2 (`grpc.insecure_channel`,
what the gateway's listener speaks), and what the client read, as one JSON
line on stdout.

    python grpc_health_client.py TARGET check|watch SERVICE [TOKEN]

TOKEN goes as the metadata `authorization: Bearer TOKEN`. `check` prints
{"code": "OK", "status": "SERVING"} or {"code": "<StatusCode name>",
"details": "..."}; `watch` prints the stream's first message the same way,
then cancels the stream.
"""

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TARGET, METHOD, SERVICE = sys.argv[1], sys.argv[2], sys.argv[3]
TOKEN = sys.argv[4] if len(sys.argv) > 4 else None

metadata = [("authorization", f"Bearer {TOKEN}")] if TOKEN else None
request = health_pb2.HealthCheckRequest(service=SERVICE)
name = health_pb2.HealthCheckResponse.ServingStatus.Name

with grpc.insecure_channel(TARGET) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        if METHOD == "check":
            reply = stub.Check(request, metadata=metadata, timeout=20)
        else:
            stream = stub.Watch(request, metadata=metadata, timeout=20)
            reply = next(stream)
            stream.cancel()
        out = {"code": "OK", "status": name(reply.status)}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details()}
print(json.dumps(out), flush=True)
