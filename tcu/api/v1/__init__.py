"""Generated protobuf and gRPC code. Do not edit: run tools/gen_protos.py."""
