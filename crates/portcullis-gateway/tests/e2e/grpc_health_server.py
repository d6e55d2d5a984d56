"""The standard gRPC health service (`grpcio-health-checking`, PyPI) on a
real `grpcio` server, for tests/e2e_grpc.rs: the upstream a gRPC team puts
behind Portcullis.

    python grpc_health_server.py PORT [CERT KEY]

Listens on 127.0.0.1:PORT, in cleartext HTTP/2 (h2c), or over TLS when
CERT and KEY (PEM files) are given. The overall health ("") and the
service "portcullis.e2e" are SERVING; any other service is unknown
(NOT_FOUND from Check).
"""

import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PORT = int(sys.argv[1])

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
servicer = health.HealthServicer()
for service in ("", "portcullis.e2e"):
    servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

address = f"127.0.0.1:{PORT}"
if len(sys.argv) == 4:
    with open(sys.argv[2], "rb") as f:
        cert = f.read()
    with open(sys.argv[3], "rb") as f:
        key = f.read()
    server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
else:
    server.add_insecure_port(address)
server.start()
print(f"grpc health server on {address}", flush=True)
server.wait_for_termination()
